"""ADM-evaluator metrics (FID, sFID, inception score, precision, recall) of a sample batch.

  rar-evaluate --samples=samples.npz \
      --reference=VIRTUAL_imagenet256_labeled.npz \
      --inception_weights=pt_inception-2015-12-05-6726825d.pth [--batch_size=256]

Both `.npz` files hold `arr_0`, uint8 images [N, H, W, 3]; the reference's precomputed
`mu`/`sigma`/`mu_s`/`sigma_s` are used when present. The weights are the pytorch-fid file
(`rar_jax.evaluation.inception.FID_WEIGHTS_URL`), downloaded by the user: nothing is downloaded
here.
Prints the metrics as JSON on stdout.
"""

from __future__ import annotations

import os
import runpy


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


if (
  __name__ == "__main__"
):  # `python -m rar_jax.evaluation.evaluate` is the command rar_jax.commands.evaluate
  runpy.run_module("rar_jax.commands.evaluate", run_name="__main__", alter_sys=True)
