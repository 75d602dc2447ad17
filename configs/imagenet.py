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


# Paper Tab. 2 (annealing ablation), (start, end) in epochs of the 400-epoch schedule: raster
# only (0, 0), random only (400, 400), start = end = 100, the best (200, 300), and further
# pairs. NOT checked against the table itself (its text could not be retrieved): the pairs
# beyond those four are a planned selection; edit this tuple to match Tab. 2 exactly.
ANNEAL_ABLATION_EPOCHS = (
  (0, 0),
  (100, 100),
  (200, 200),
  (300, 300),
  (400, 400),
  (100, 200),
  (100, 300),
  (200, 300),
  (200, 400),
  (300, 400),
)
TOTAL_EPOCHS = 400


def get_hyper(h: Any) -> list[dict[str, Any]]:
  """The annealing ablation as launch/sweep.py points.

  The pairs are given in steps (epoch / 400 x train.steps): get_config sets the fraction keys
  to None, and config_flags cannot override a None field from the command line.
  """
  total = get_config().train.steps
  return h.product(
    [
      h.zipit(
        [
          h.sweep(
            "config.randomness.anneal_start_steps",
            [s * total // TOTAL_EPOCHS for s, _ in ANNEAL_ABLATION_EPOCHS],
          ),
          h.sweep(
            "config.randomness.anneal_end_steps",
            [e * total // TOTAL_EPOCHS for _, e in ANNEAL_ABLATION_EPOCHS],
          ),
        ]
      ),
      h.fixed("config.randomness.anneal_start_fraction", None),
      h.fixed("config.randomness.anneal_end_fraction", None),
    ]
  )
