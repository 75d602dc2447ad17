"""RAR-B/L/XL/XXL on ImageNet 256x256 (MaskGIT-VQGAN tokens), the official recipe.

  python -m rar_jax.main --config=configs/imagenet.py:L --workdir=gs://bucket/rar_l

The argument is the variant (B, L, XL or XXL; default B). Recipe: rar_official.md section 2.
"""

import ml_collections

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
  config = ml_collections.ConfigDict()
  config.seed = 42

  config.model = ml_collections.ConfigDict()
  config.model.variant = variant
  config.model.width = ml_collections.config_dict.placeholder(int)
  config.model.depth = ml_collections.config_dict.placeholder(int)
  config.model.heads = ml_collections.config_dict.placeholder(int)
  config.model.mlp_dim = ml_collections.config_dict.placeholder(int)
  config.model.seq_len = 256
  config.model.codebook_size = 1024
  config.model.num_classes = 1000
  config.model.dropout = 0.1
  config.model.attn_dropout = 0.1
  config.model.dtype = "bfloat16"
  config.model.scan_layers = True
  config.model.remat_policy = "none"

  # Randomness annealing: r = 1 until step 125k (epoch 200 of 400), linear to 0 at 187.5k.
  config.randomness = ml_collections.ConfigDict()
  config.randomness.anneal_start_steps = ml_collections.config_dict.placeholder(int)
  config.randomness.anneal_end_steps = ml_collections.config_dict.placeholder(int)
  config.randomness.anneal_start_fraction = ml_collections.config_dict.placeholder(float)
  config.randomness.anneal_end_fraction = ml_collections.config_dict.placeholder(float)
  config.randomness.anneal_start_steps = 125_000
  config.randomness.anneal_end_steps = 187_500
  config.randomness.label_dropout = 0.1

  guidance, power, temperature = SAMPLING[variant]
  config.sampling = ml_collections.ConfigDict()
  config.sampling.guidance_scale = guidance
  config.sampling.guidance_power = power
  config.sampling.temperature = temperature
  return config
