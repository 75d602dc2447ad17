"""Benchmarks of the train step and the sampler, on any backend; one JSON line per measurement.

  rar-bench train --width=256 --depth=4 --heads=8 --mlp_dim=1024 --batch=8
  rar-bench sample --variant=XL --batch=256 --dtype=bfloat16 --decode
  rar-bench sample --export=workdirs/digits_export --speculative_window=4,8,16

Step times are medians over --steps timed calls after --warmup calls; compilation is timed
apart. Model FLOPs are analytic (rar_jax.training.metrics). The fraction of peak uses the chip
table on TPU/GPU; on the CPU the peak is a large square matmul of the same dtype timed in the same
run, so the figure is a ratio that holds on a noisy machine.
"""

from __future__ import annotations

import contextlib
import functools
import runpy
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from rar_jax import sharding
from rar_jax.infra import chips
from rar_jax.model import numerics, presets
from rar_jax.sampling import decoding
from rar_jax.training import metrics, optim, train_state, train_step

# The official recipe's optimizer and step count (configs/common.py, the one source of
# defaults); its values do not change the compiled program.
RECIPE = common.base_config()


def timed(fn: Callable[[], Any], steps: int, warmup: int, profile_dir: str | None = None) -> float:
  """Median wall time of fn() (blocking on its result) after warm-up calls; with profile_dir,
  the timed calls are also traced there (`jax.profiler`; open with TensorBoard or Perfetto)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  with jax.profiler.trace(profile_dir) if profile_dir else contextlib.nullcontext():
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - start)
  return float(np.median(times))


def matmul_peak_tflops(dtype: Any, n: int = 2048) -> float:
  """Measured TFLOP/s of one n x n x n matmul on one device (the CPU peak)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / timed(lambda: f(a), steps=10, warmup=2) / 1e12


def peak_tflops(dtype: Any) -> tuple[float, str]:
  """(peak TFLOP/s per device, its source): measured on the CPU, the chip table elsewhere."""
  device = jax.devices()[0]
  if device.platform == "cpu":
    return matmul_peak_tflops(dtype), "measured matmul"
  table = chips.peak_tflops(device.device_kind)
  return (table, "chip table") if table else (float("nan"), "unknown chip")


def bench_train(
  cfg: presets.ModelConfig, batch: int, steps: int, warmup: int, profile_dir: str | None = None
) -> dict:
  """Compile time, median step time and model FLOPs of the real train step on all devices."""
  tx, schedule = optim.make_optimizer(RECIPE.optim, cfg, RECIPE.train.steps)
  mesh = sharding.make_mesh()
  sc = train_step.StepConfig(cfg, 0, 1000, 0.1)
  abstract = train_state.abstract_state(cfg, tx, mesh)
  compiled, lower_s, compile_s = train_step.compile_train_step(
    sc, tx, schedule, mesh, abstract, batch
  )
  rng = np.random.default_rng(0)
  batch_sh = sharding.batch_sharding(mesh)
  data = {
    "tokens": jax.device_put(
      rng.integers(0, cfg.codebook_size, (batch, cfg.seq_len), np.int32), batch_sh
    ),
    "label": jax.device_put(rng.integers(0, cfg.num_classes, (batch,), np.int32), batch_sh),
  }
  holder = [train_state.init_sharded(cfg, tx, 0, mesh)]

  def run():
    holder[0], out = compiled(holder[0], data)
    return out

  seconds = timed(run, steps, warmup, profile_dir)
  flops = metrics.train_flops_per_sequence(cfg) * batch
  return {"compile_s": lower_s + compile_s, "step_s": seconds, "flops": flops}


def sample_flops(cfg: presets.ModelConfig, rows: int) -> float:
  """Forward FLOPs of one sampled image with a KV cache: L + 1 fed positions per row."""
  dense = 2.0 * metrics.matmul_params_per_token(cfg) * (cfg.seq_len + 1)
  attention = 2.0 * (cfg.seq_len + 1) ** 2 * cfg.width * cfg.depth  # causal, with the cache
  return rows * (dense + attention)


def bench_sample(
  cfg: presets.ModelConfig,
  batch: int,
  steps: int,
  warmup: int,
  guidance: float,
  decode: bool,
  profile_dir: str | None = None,
) -> dict:
  """Compile time, median time per sampled batch (optionally decoded) and model FLOPs."""
  settings = decoding.SamplingConfig(guidance_scale=guidance, guidance_power=1.5, temperature=1.0)
  mesh = sharding.make_mesh()
  from rar_jax.model import rar  # noqa: PLC0415

  params = rar.init_params_sharded(cfg, jax.random.key(0), mesh)
  sampler = decoding.make_sampler(cfg, settings)
  classes = np.arange(batch, dtype=np.int32) % cfg.num_classes
  decoder = _vqgan_decoder(mesh) if decode else None
  calls = [0]

  def run():
    calls[0] += 1
    tokens = decoding.sample_on_mesh(sampler, mesh, params, classes, jax.random.key(calls[0]))
    return decoder(tokens) if decoder else tokens

  start = time.perf_counter()
  jax.block_until_ready(run())
  compile_s = time.perf_counter() - start
  seconds = timed(run, steps, warmup, profile_dir)
  rows = 2 * batch if settings.guided else batch
  return {"compile_s": compile_s, "step_s": seconds, "flops": sample_flops(cfg, rows)}


def bench_export_sample(
  export_dir: str, batch: int, windows: list[int], steps: int, warmup: int, score_samples: int
) -> list[dict]:
  """The plain sampler (window 0) and each speculative window side by side on a trained export
  with the export's sampling settings. The samplers are timed in interleaved rounds (one call
  of each per round), so a slower moment of a shared machine hits them all alike. Reports model
  calls per image and tokens per call (means over the timed calls), images/s (median) and, with
  score_samples > 0, the digits score of that many samples (a fixed seed)."""
  from rar_jax.sampling import export, speculative  # noqa: PLC0415

  exp = export.load(export_dir)
  cfg = exp.model
  for window in windows:
    speculative.check_window(window, cfg.seq_len)  # every bad value before any compile
  classes = jnp.arange(batch, dtype=jnp.int32) % cfg.num_classes
  results, samplers = [], []
  for window in [0, *windows]:
    settings = decoding.SamplingConfig.from_group(exp.sampling, speculative_window=window)
    counted = functools.partial(decoding.generate_counted, cfg, sampling=settings)
    start = time.perf_counter()
    jax.block_until_ready(counted(exp.params, classes, jax.random.key(0)))
    compile_s = time.perf_counter() - start
    samplers.append(counted)
    results.append({"window": window, "batch": batch, "compile_s": round(compile_s, 3)})
  times = [[] for _ in samplers]
  calls = [[] for _ in samplers]
  for round_ in range(warmup + steps):
    for i, counted in enumerate(samplers):
      start = time.perf_counter()
      _, n = jax.block_until_ready(counted(exp.params, classes, jax.random.key(1 + round_)))
      if round_ >= warmup:
        times[i].append(time.perf_counter() - start)
        calls[i].append(int(n))
  for result, counted, t, n in zip(results, samplers, times, calls, strict=True):
    result["model_calls_per_image"] = round(float(np.mean(n)), 2)
    result["tokens_per_call"] = round(cfg.seq_len / float(np.mean(n)), 3)
    result["images_per_s"] = round(batch / float(np.median(t)), 3)
    if score_samples:
      result["score"] = _export_score(exp, counted, score_samples)
  return results


def _export_score(exp: Any, counted: Callable, num: int) -> float:
  """Digits accuracy of num samples (classes round-robin, a fixed seed) of a counted sampler."""
  from rar_jax import tokenizers  # noqa: PLC0415
  from rar_jax.evaluation import digits_score  # noqa: PLC0415
  from rar_jax.sampling import images  # noqa: PLC0415

  classes = np.arange(num, dtype=np.int32) % exp.model.num_classes
  tokens, _ = counted(exp.params, jnp.asarray(classes), jax.random.key(12345))
  tokenizer = tokenizers.build(exp.tokenizer, exp.image_size)
  samples = images.to_uint8(tokenizer.decode(np.asarray(tokens)))
  return digits_score.score(samples, classes, exp.model.num_classes)["accuracy"]


def _vqgan_decoder(mesh):
  """The released-size MaskGIT-VQGAN decoder with random weights (speed only)."""
  from rar_jax.tokenizers import vqgan  # noqa: PLC0415

  cfg = vqgan.VQGANConfig()
  tok = vqgan.Tokenizer(cfg, vqgan.init_params(cfg, jax.random.key(1)), mesh=mesh)
  return tok.decode


def bench_compile_only(
  mode: str, cfg: presets.ModelConfig, batch: int, topology: str, guidance: float
) -> dict:
  """The compiler's view of the program on a TPU slice (no run): per-device memory and cost of
  unrolled 1- and 2-layer programs, extrapolated to cfg.depth; step_s is the TPU compiler's
  time estimate (cost_analysis "optimal_seconds"), an estimate and not a measurement, plus the
  roofline seconds of the Pallas kernel calls, which the cost analysis does not see: each call
  reports its FLOPs and HBM bytes (`model.kernels.accounting`), extrapolated to depth alike and
  listed as "kernels" [{"name", "calls", "flops", "bytes", "seconds"}]. For the
  sampler, the whole sample call: the analysis counts a segment's token loop body once, so the
  program is compiled with one and with two token steps per loop iteration, their difference is
  one step's cost, and every step after the first is added (the one-off work, prefill and cache
  set-up, counted once); the kernels in the loop report every step themselves."""
  from rar_jax.tools import compiled_costs, tpu_compiler  # noqa: PLC0415

  chip, dims = tpu_compiler.parse_slice(topology)
  mesh = sharding.make_mesh((-1, 1, 1), 1, tpu_compiler.devices(chip, dims))
  cfg = numerics.for_platform(cfg, "tpu")
  if mode == "train":
    program = lambda c: compiled_costs.train_program(c, mesh, batch)[0]  # noqa: E731
    flops = metrics.train_flops_per_sequence(cfg) * batch
    costs = compiled_costs.per_layer(program, cfg)
  else:
    settings = decoding.SamplingConfig(guidance, guidance_power=1.5, temperature=1.0)
    flops = sample_flops(cfg, 2 * batch if settings.guided else batch)
    costs = _whole_sample_call(cfg, mesh, batch, settings)
  at_depth = costs["at_depth"]
  kernels = [
    {**row, "seconds": round(row["seconds"], 9), "calls": round(row["calls"], 1)}
    for row in costs["kernels_at_depth"]
  ]
  kernel_s = sum(row["seconds"] for row in costs["kernels_at_depth"])
  if at_depth.get("optimal_seconds", 0.0) <= 0:  # libtpu 0.0.42 gives negative ones for v6e
    raise ValueError(
      f"the compiler for {topology} gives no usable time estimate (optimal_seconds = "
      f"{at_depth.get('optimal_seconds')}); `rar-plan --topology=...` reports its memory"
    )
  rounded = lambda d: {k: round(v, 9 if k == "optimal_seconds" else 1) for k, v in d.items()}  # noqa: E731
  return {
    "compile_s": costs["compile_s"],
    "step_s": at_depth["optimal_seconds"] + kernel_s,
    "flops": flops,
    "peak": (chips.peak_tflops(chip.device_kind), "chip table"),
    "extra": {
      "estimate": (
        "TPU compiler (compile only): step_s is cost_analysis optimal_seconds plus the Pallas "
        "kernels' own roofline seconds (kernels)"
      ),
      "topology": topology,
      "compiler_step_s": round(at_depth["optimal_seconds"], 9),
      "kernels": kernels,
      "compiler_per_layer": rounded(costs["per_layer"]),
      "compiler_at_depth": rounded(at_depth),
    },
  }


def window_call_costs(
  cfg: presets.ModelConfig, batch: int, windows: list[int], topology: str, guidance: float
) -> list[dict]:
  """The compiler's estimate for one cached model call of W positions inside a sampling loop
  (`compiled_costs.model_call_program`, unroll 2 less unroll 1) per chip of `topology` at
  `batch` images per chip: a speculative window call, or with W = 1 one plain token step, the
  decode kernel's reads averaged over a sampling call's positions. One row per W:
  {"images_per_chip", "rows_per_chip", "window", "call_s", "compiler_s", "kernel_s",
  "vs_one_token"} (vs_one_token: against the W = 1 call, compiled too)."""
  from rar_jax.tools import compiled_costs, tpu_compiler  # noqa: PLC0415

  chip, dims = tpu_compiler.parse_slice(topology)
  mesh = sharding.make_mesh((1, 1, 1), 1, tpu_compiler.devices(chip, dims)[:1])  # one chip
  settings = decoding.SamplingConfig(guidance, guidance_power=1.5, temperature=1.0)
  rows, costs = [], {}
  for window in sorted({1, *windows}):
    found = [
      compiled_costs.per_layer(
        lambda c, w=window, u=unroll: compiled_costs.model_call_program(
          c, mesh, batch, w, settings, u
        ),
        cfg,
      )
      for unroll in (1, 2)
    ]  # one more call in the loop: the difference
    kernel_s = sum(row["seconds"] for row in found[0]["kernels_at_depth"])
    compiler_s = found[1]["at_depth"]["optimal_seconds"] - found[0]["at_depth"]["optimal_seconds"]
    costs[window] = (compiler_s + kernel_s, compiler_s, kernel_s)
  for window in windows:
    call_s, compiler_s, kernel_s = costs[window]
    rows.append({
      "images_per_chip": batch,
      "rows_per_chip": batch * (2 if settings.guided else 1),
      "window": window,
      "call_s": round(call_s, 9),
      "compiler_s": round(compiler_s, 9),
      "kernel_s": round(kernel_s, 9),
      "vs_one_token": round(call_s / costs[1][0], 3),
      "decode_attention_impl": numerics.impl(cfg, "decode_attention_impl"),
    })  # fmt: skip
  return rows


def _whole_sample_call(cfg, mesh, batch: int, settings: decoding.SamplingConfig) -> dict:
  """`compiled_costs.per_layer` of the sampler with every token step counted: programs with 1
  and 2 steps per loop iteration (`decoding.unrolled_loops`) give one step's cost per segment
  (a segment of odd length runs its extra step outside the loop: counted in the difference,
  as the mean over segments); steps 2 .. n of each segment are added to the 1-step program."""
  from rar_jax.tools import compiled_costs  # noqa: PLC0415

  dtype = jnp.dtype(cfg.dtype)

  def program(c, unroll):
    with decoding.unrolled_loops(unroll):
      return compiled_costs.sample_program(c, mesh, batch, settings, dtype)

  once = compiled_costs.per_layer(lambda c: program(c, 1), cfg)
  twice = compiled_costs.per_layer(lambda c: program(c, 2), cfg)
  trips = np.diff([0, *decoding.decode_segments(cfg)])
  extra = float(np.mean(1 + trips % 2))  # loop bodies the 2-step program adds per segment
  for part in ("per_layer", "at_depth"):
    for key in {"flops", "bytes accessed", "optimal_seconds"} & once[part].keys():
      step = (twice[part][key] - once[part][key]) / extra  # summed over the segments
      once[part][key] += (float(np.mean(trips)) - 1) * step
  once["compile_s"] += twice["compile_s"]
  return once


def slice_devices(topology: str) -> tuple[str, int]:
  """(device kind, chips) of a libtpu slice name."""
  from rar_jax.tools import tpu_compiler  # noqa: PLC0415

  chip, dims = tpu_compiler.parse_slice(topology)
  return chip.device_kind, int(np.prod(dims))


# `python -m rar_jax.tools.bench` runs the command rar_jax.commands.bench.
if __name__ == "__main__":
  runpy.run_module("rar_jax.commands.bench", run_name="__main__", alter_sys=True)
