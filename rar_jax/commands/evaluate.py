"""`rar-evaluate`: ADM-evaluator metrics of a sample batch, printed as JSON
(`rar_jax.evaluation.evaluate`).

  rar-evaluate --samples=samples.npz --reference=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=pt_inception-2015-12-05-6726825d.pth [--batch_size=256]
"""

from __future__ import annotations

import json

from absl import app, flags

from rar_jax.commands import startup
from rar_jax.evaluation import evaluate

_SAMPLES = flags.DEFINE_string("samples", None, "Sample batch .npz (arr_0: uint8 [N, H, W, 3]).")
_REFERENCE = flags.DEFINE_string(
  "reference", None, "Reference batch .npz, e.g. VIRTUAL_imagenet256_labeled.npz."
)
_WEIGHTS = flags.DEFINE_string(
  "inception_weights", None, "pt_inception-2015-12-05-6726825d.pth (or an .npz of its arrays)."
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 256, "Images per Inception call, rounded up to a multiple of the local devices."
)
_DISTANCE_DTYPE = flags.DEFINE_enum(
  "distance_dtype",
  "float16",
  ["float16", "float32"],
  "Precision/recall distances: float16 as ADM (float32 fallback), or float32.",
)
flags.mark_flags_as_required(["samples", "reference", "inception_weights"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  evaluate.check_inputs(_SAMPLES.value, _REFERENCE.value, _WEIGHTS.value)  # one line if missing
  metrics = evaluate.run(
    _SAMPLES.value, _REFERENCE.value, _WEIGHTS.value, _BATCH_SIZE.value, _DISTANCE_DTYPE.value
  )
  print(json.dumps(metrics, indent=2))


def cli() -> None:
  """Console-script entry point (`rar-evaluate`)."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
