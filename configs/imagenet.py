"""RAR-B/L/XL/XXL on ImageNet 256x256 (MaskGIT-VQGAN tokens) with the official recipe.

  python -m rar_jax.main --config=configs/imagenet.py:L --workdir=gs://bucket/rar_l \
      --config.data.dir=gs://bucket/imagenet_tokens

The argument is the variant (B, L, XL or XXL; default B).
"""

from typing import Any

import ml_collections

from configs import common

# variant -> (guidance scale, guidance power, temperature); paper Tab. 6 / README_RAR.md.
SAMPLING = {
  "B": (16.0, 2.75, 1.0),
  "L": (15.5, 2.5, 1.02),
  "XL": (6.9, 1.5, 1.02),
  "XXL": (8.0, 1.2, 1.02),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "B"
  if variant not in SAMPLING:
    raise ValueError(
      f"configs/imagenet.py: unknown variant {variant!r}; use one of {list(SAMPLING)}"
    )
  config = common.base_config()
  config.model.variant = variant
  config.data.dir = "data/imagenet256_maskgitvq"
  config.eval.grid_every = 5_000  # the official preview interval; needs tokenizer.weights
  # Held-out raster loss (needs a validation split: python -m rar_jax.data.holdout), and FID /
  # IS of 10k samples at the end once eval.inception_weights and eval.fid_reference are given.
  config.eval.every_steps = 5_000
  config.eval.fid_samples = 10_000
  (config.sampling.guidance_scale, config.sampling.guidance_power, config.sampling.temperature) = (
    SAMPLING[variant]
  )
  return config


# Paper Tab. 2 (annealing ablation, RAR-L), (start, end) in epochs of the 400-epoch schedule:
# raster only (0, 0), random only (400, 400), start = end = 100, the best (200, 300), and the
# rest of the grid start <= end over {0, 100, 200, 300, 400}.
TOTAL_EPOCHS = 400
ANNEAL_ABLATION_EPOCHS = tuple(
  (start, end) for start in range(0, 401, 100) for end in range(start, 401, 100)
)


def get_hyper(h: Any) -> list[dict[str, Any]]:
  """The annealing ablation as launch/sweep.py points (fractions of train.steps)."""
  return h.zipit(
    [
      h.sweep(
        "config.randomness.anneal_start_fraction",
        [s / TOTAL_EPOCHS for s, _ in ANNEAL_ABLATION_EPOCHS],
      ),
      h.sweep(
        "config.randomness.anneal_end_fraction",
        [e / TOTAL_EPOCHS for _, e in ANNEAL_ABLATION_EPOCHS],
      ),
    ]
  )
