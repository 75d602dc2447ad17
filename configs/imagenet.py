"""RAR-B/L/XL/XXL on ImageNet 256x256 (MaskGIT-VQGAN tokens) with the official recipe.

  python -m rar_jax.main --config=configs/imagenet.py:L --workdir=gs://bucket/rar_l \
      --config.data.dir=gs://bucket/imagenet_tokens

The argument is the variant (B, L, XL or XXL; default B).
"""

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
  # The official steps, so that --config.train.steps overrides keep the paper's anneal points.
  config.randomness.anneal_start_steps = 125_000
  config.randomness.anneal_end_steps = 187_500
  config.randomness.anneal_start_fraction = None
  config.randomness.anneal_end_fraction = None
  config.data.dir = "data/imagenet256_maskgitvq"
  config.eval.grid_every = 5_000  # the official preview interval; needs tokenizer.weights
  (config.sampling.guidance_scale, config.sampling.guidance_power, config.sampling.temperature) = (
    SAMPLING[variant]
  )
  return config
