"""ADM-evaluator metrics (FID, sFID, inception score, precision, recall) of a sample batch.

  python -m rar_jax.evaluation.evaluate --samples=samples.npz \
      --reference=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=pt_inception-2015-12-05-6726825d.pth [--batch_size=256]

Both `.npz` files hold `arr_0`, uint8 images [N, H, W, 3]; the reference's precomputed
`mu`/`sigma`/`mu_s`/`sigma_s` are used when present. The weights are the pytorch-fid file
(`rar_jax.evaluation.inception.FID_WEIGHTS_URL`), downloaded by the user: nothing is downloaded
here.
Prints the metrics as JSON on stdout.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from rar_jax.infra import console, host_memory, user_errors


def check_inputs(samples: str, reference: str, inception_weights: str) -> None:
  """Raises FileNotFoundError naming every missing input (flag and path)."""
  given = {"samples": samples, "reference": reference, "inception_weights": inception_weights}
  missing = [f"--{flag}={path}" for flag, path in given.items() if not os.path.isfile(path)]
  if missing:
    raise FileNotFoundError(f"input file(s) not found: {', '.join(missing)}")


def run(
  samples: str,
  reference: str,
  inception_weights: str,
  batch_size: int = 256,
  distance_dtype: str = "float16",
) -> dict[str, float]:
  """Checks the inputs, loads the Inception weights and returns `fid.evaluate`'s metrics."""
  check_inputs(samples, reference, inception_weights)
  from rar_jax.evaluation import (  # noqa: PLC0415  (imports jax; after the cheap checks)
    fid,
    inception,
  )

  for path in (samples, reference):  # bad images are named before any Inception pass
    fid.check_images(path)
  extractor = inception.FeatureExtractor.from_file(inception_weights, batch_size=batch_size)
  return fid.evaluate(samples, reference, extractor, distance_dtype=distance_dtype)


def cli() -> None:
  """Console-script entry point (`rar-evaluate`): defines the flags (only here, so importers keep
  their own) and runs."""
  samples = flags.DEFINE_string("samples", None, "Sample batch .npz (arr_0: uint8 [N, H, W, 3]).")
  reference = flags.DEFINE_string(
    "reference", None, "Reference batch .npz, e.g. VIRTUAL_imagenet256_labeled.npz."
  )
  weights = flags.DEFINE_string(
    "inception_weights", None, "pt_inception-2015-12-05-6726825d.pth (or an .npz of its arrays)."
  )
  batch_size = flags.DEFINE_integer(
    "batch_size", 256, "Images per Inception call, rounded up to a multiple of the local devices."
  )
  distance_dtype = flags.DEFINE_enum(
    "distance_dtype",
    "float16",
    ["float16", "float32"],
    "Precision/recall distances: float16 as ADM (float32 fallback), or float32.",
  )
  flags.mark_flags_as_required(["samples", "reference", "inception_weights"])

  def main(argv: list[str]) -> None:
    console.setup()  # third-party INFO logging off unless --verbosity
    host_memory.retain_freed_memory()  # before JAX starts its threads
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
      check_inputs(samples.value, reference.value, weights.value)
    except FileNotFoundError as e:
      raise app.UsageError(str(e)) from e
    metrics = run(
      samples.value, reference.value, weights.value, batch_size.value, distance_dtype.value
    )
    print(json.dumps(metrics, indent=2))

  user_errors.run(main, __name__)


if __name__ == "__main__":
  cli()
