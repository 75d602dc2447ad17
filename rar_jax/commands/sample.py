"""`rar-sample`: a sample set for evaluation from an export (`rar_jax.sampling.sample`).

  rar-sample --export=exports/rar_xl --output=samples/rar_xl \
      --tokenizer_weights=maskgit-vqgan-imagenet-f16-256.bin [--num_samples=50000]
"""

from __future__ import annotations

import time

import jax
from absl import flags
from etils import epath
from jax.experimental import multihost_utils

from rar_jax import tokenizers
from rar_jax.commands import startup
from rar_jax.infra import console, workdir_lease
from rar_jax.sampling import decoding, export, sample

_EXPORT = flags.DEFINE_string("export", None, "Export directory (rar-export).")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory (local or gs://).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 50_000, "Images to generate.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Global images per sampler call.")
_SEED = flags.DEFINE_integer("seed", 42, "Sampling seed.")
_WEIGHTS = flags.DEFINE_string("tokenizer_weights", None, "VQGAN weights file (VQGAN exports).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Default: the export's.")
_POWER = flags.DEFINE_float("guidance_power", None, "Default: the export's.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Default: the export's.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely codes (0: off, as official).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0: off, as official).")
_WINDOW = flags.DEFINE_string(
  "speculative_window",
  None,
  "Speculative Jacobi window W, 0 (the plain sampler) or auto (per backend and images per chip); "
  "the same samples law. Default: the export's.",
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Delete a sample set made with other settings in --output, then sample."
)
flags.mark_flags_as_required(["export", "output"])
flags.register_validator("num_samples", lambda v: v > 0, "--num_samples must be positive")
flags.register_validator("batch_size", lambda v: v > 0, "--batch_size must be positive")


def main(argv: list[str]) -> None:
  del argv
  workdir_lease.hold_for_process(_OUTPUT.value, "sampling")  # until exit: no other writer
  exp = export.load(_EXPORT.value)
  settings = decoding.SamplingConfig.from_group(
    exp.sampling,
    guidance_scale=_GUIDANCE.value,
    guidance_power=_POWER.value,
    temperature=_TEMPERATURE.value,
    top_k=_TOP_K.value,
    top_p=_TOP_P.value,
    speculative_window=_WINDOW.value,
  )
  tok_cfg = {**exp.tokenizer, "weights": _WEIGHTS.value or exp.tokenizer.get("weights")}
  tokenizer = tokenizers.build(tok_cfg, exp.image_size)
  out = epath.Path(_OUTPUT.value)
  start = time.perf_counter()
  sample.generate(
    *(exp, tokenizer, out, _NUM_SAMPLES.value, _BATCH_SIZE.value, _SEED.value, settings),
    export_dir=_EXPORT.value,
    tokenizer_config=tok_cfg,
    overwrite=_OVERWRITE.value,
  )
  multihost_utils.sync_global_devices("rar_jax.sampling.sample: chunks written")
  if jax.process_index() == 0:
    sample.assemble(out, _NUM_SAMPLES.value, exp.model.num_classes, _BATCH_SIZE.value)
    rate = _NUM_SAMPLES.value / (time.perf_counter() - start)
    console.info("Wrote %s (%.2f images/s this run)", out / sample.SAMPLES_FILE, rate)


def cli() -> None:
  """Console-script entry point (`rar-sample`)."""
  startup.run(main, __name__)


if __name__ == "__main__":
  cli()
