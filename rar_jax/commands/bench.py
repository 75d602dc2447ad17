"""`rar-bench`: benchmarks of the train step and the sampler, one JSON line per measurement
(`rar_jax.tools.bench`, whose docstring says how each figure is measured).

  rar-bench train --width=256 --depth=4 --heads=8 --mlp_dim=1024 --batch=8
  rar-bench sample --variant=XL --batch=256 --dtype=bfloat16 --decode
  rar-bench train --variant=XL --batch=128 --dtype=bfloat16 --compile_only --topology=v5p:2x2x1
  rar-bench sample --export=workdirs/digits_export --speculative_window=4,8,16
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags

from rar_jax.commands import startup
from rar_jax.model import numerics, presets
from rar_jax.tools import bench

flags.DEFINE_string("variant", None, "B/L/XL/XXL preset; explicit sizes override it.")
flags.DEFINE_integer("width", None, "Model width.")
flags.DEFINE_integer("depth", None, "Number of blocks.")
flags.DEFINE_integer("heads", None, "Attention heads.")
flags.DEFINE_integer("mlp_dim", None, "MLP hidden size.")
flags.DEFINE_integer("seq_len", 256, "Image tokens.")
flags.DEFINE_integer("batch", 8, "Global batch (images).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_string("remat", "none", "Remat policy (train).")
flags.DEFINE_bool("scan", True, "Scan over layers (False: unrolled).")
flags.DEFINE_integer("attention_blocks", 4, "Query blocks of the causal attention.")
flags.DEFINE_integer("steps", 10, "Timed calls.")
flags.DEFINE_integer("warmup", 2, "Untimed calls after compilation.")
flags.DEFINE_float("guidance", 6.9, "Guidance scale (sample); 0 disables guidance.")
flags.DEFINE_bool("decode", False, "Include VQGAN decoding (sample).")
flags.DEFINE_string("profile_dir", None, "Also write a jax.profiler trace of the timed calls.")
for key, choices in numerics.CHOICES.items():
  flags.DEFINE_enum(key, "auto", ["auto", *choices], f"model.{key} (rar_jax/model/numerics.py).")
flags.DEFINE_bool(
  "compile_only", False, "Compile for --topology with the TPU compiler instead of running."
)
flags.DEFINE_string("topology", "v5p:2x2x1", "TPU slice for --compile_only (libtpu's names).")
flags.DEFINE_string("export", None, "Sample a trained export (its sizes and settings) instead.")
flags.DEFINE_list(
  "speculative_window",
  [],
  "With --export: windows W to compare to W = 0. With --compile_only: the TPU compiler's cost of "
  "one W-position model call per chip at --batch images per chip (W = 1: a plain token step).",
)
flags.DEFINE_integer("score_samples", 0, "With --export: digits score of this many samples.")
f = flags.FLAGS


def main(argv: list[str]) -> None:
  if f.compile_only:  # eager work (initializers, optax inits) stays on the CPU
    jax.config.update("jax_platforms", "cpu")
  if len(argv) != 2 or argv[1] not in ("train", "sample"):
    raise app.UsageError("usage: python -m rar_jax.tools.bench train|sample [flags]")
  mode = argv[1]
  if f.speculative_window and not (f.export or f.compile_only):
    raise app.UsageError(
      "--speculative_window needs --export (a trained model's acceptance) or --compile_only "
      "(the cost of a window call)"
    )
  if f.export:
    if mode != "sample":
      raise app.UsageError("--export is for `bench sample`")
    windows = [int(w) for w in f.speculative_window]
    for result in bench.bench_export_sample(
      f.export, f.batch, windows, f.steps, f.warmup, f.score_samples
    ):
      print(json.dumps({"backend": jax.default_backend(), **result}), flush=True)
    return
  sizes = {k: getattr(f, k) for k in ("width", "depth", "heads", "mlp_dim")}
  cfg = presets.resolve(
    {
      "variant": f.variant,
      **sizes,
      "seq_len": f.seq_len,
      "dtype": f.dtype,
      "remat_policy": f.remat,
      "scan_layers": f.scan,
      "attention_blocks": f.attention_blocks,
      **{key: getattr(f, key) for key in numerics.CHOICES},
    }
  )
  if f.compile_only and f.speculative_window:
    if mode != "sample":
      raise app.UsageError("--speculative_window is for `bench sample`")
    cfg = numerics.for_platform(cfg, "tpu")
    windows = [int(w) for w in f.speculative_window]
    for result in bench.window_call_costs(cfg, f.batch, windows, f.topology, f.guidance):
      print(json.dumps({"mode": "sample call", "topology": f.topology, **result}), flush=True)
    return
  if f.compile_only:
    cfg = numerics.for_platform(cfg, "tpu")
    result = bench.bench_compile_only(mode, cfg, f.batch, f.topology, f.guidance)
  elif mode == "train":
    result = bench.bench_train(cfg, f.batch, f.steps, f.warmup, f.profile_dir)
  else:
    result = bench.bench_sample(
      cfg, f.batch, f.steps, f.warmup, f.guidance, f.decode, f.profile_dir
    )
  peak, peak_source = result.get("peak") or bench.peak_tflops(jnp.dtype(f.dtype))
  devices = jax.devices() if not f.compile_only else None
  kind, count = (
    (devices[0].device_kind, len(devices)) if devices else bench.slice_devices(f.topology)
  )
  per_device = result["flops"] / result["step_s"] / count / 1e12
  print(
    json.dumps(
      {
        "mode": mode,
        "backend": "tpu (compile only)" if f.compile_only else jax.default_backend(),
        "device_kind": kind,
        "device_count": count,
        "width": cfg.width,
        "depth": cfg.depth,
        "heads": cfg.heads,
        "mlp_dim": cfg.mlp_dim,
        "seq_len": cfg.seq_len,
        "batch": f.batch,
        "dtype": f.dtype,
        "remat": cfg.remat_policy,
        "scan": cfg.scan_layers,
        "attention_blocks": cfg.attention_blocks,
        **{k: numerics.impl(cfg, k) for k in numerics.CHOICES},
        "compile_s": round(result["compile_s"], 3),
        "step_s": round(result["step_s"], 5),
        "images_per_s": round(f.batch / result["step_s"], 3),
        "tokens_per_s": round(f.batch * cfg.seq_len / result["step_s"], 1),
        "model_tflops_per_device": round(per_device, 5),
        "peak_tflops_per_device": round(peak, 4),
        "peak_source": peak_source,
        "fraction_of_peak": round(per_device / peak, 4),
        **result.get("extra", {}),
      }
    ),
    flush=True,
  )


def cli() -> None:
  """Console-script entry point (`rar-bench`)."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
