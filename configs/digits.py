"""The embedded default: a small RAR on scikit-learn's 8x8 digits (64 grey-level tokens,
17 levels, 10 classes), trained on a laptop CPU in a few minutes.

  bash launch/local.sh train        # = python -m rar_jax.main --config=configs/digits.py ...

The data set is created in data.dir on first use. The annealing schedule keeps the paper's
shape (random until 50% of the steps, raster from 75%), scaled to the run.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = common.base_config()
  config.seed = 0
  config.model.variant = ""
  config.model.width = 128
  config.model.depth = 4
  config.model.heads = 4
  config.model.mlp_dim = 512
  config.model.seq_len = 64
  config.model.codebook_size = 17
  config.model.num_classes = 10
  config.model.dtype = "float32"
  config.model.scan_layers = (
    False  # unrolled layers: faster on XLA:CPU (docs/measurements/performance.md)
  )

  config.optim.lr = 1e-3
  config.optim.end_lr = 1e-5
  config.optim.warmup_steps = 100

  config.train.steps = 800
  config.train.global_batch = 64
  config.train.log_every = 50

  config.checkpoint.every_steps = 200
  config.checkpoint.keep = 2
  config.checkpoint.keep_every = 0

  config.data.dir = "data/digits"
  config.data.builtin = "digits"

  config.image_size = 8
  config.tokenizer.kind = "pixel"
  config.eval.grid_every = 200
  config.eval.grid_classes = tuple(range(10))
  config.eval.samples_per_class = 20
  config.eval.score = "digits"
  config.eval.every_steps = 100  # held-out raster loss on the 297 validation digits
  config.eval.fid_samples = 500  # digits FID of 50 samples per class, at the end
  config.eval.fid_features = "digits"

  config.sampling.guidance_scale = 2.0
  config.sampling.guidance_power = 0.0
  config.sampling.temperature = 1.0
  return config
