"""The randomness-annealing ablation (paper Tab. 2) in miniature, on the digits config
shortened to run on a 2-core CPU (300 steps per run), ranked by held-out raster loss and
digits FID; the paper's schedule runs twice (seeds 0 and 1) to measure run-to-run noise.

  python launch/sweep.py run --config=configs/digits_sweep.py --workdir=workdirs/digits_sweep \
      --mode=local
  python launch/sweep.py collect --workdir=workdirs/digits_sweep

Schedules are (start, end) fractions of train.steps: r = 1 before start, linear to 0 at end.
"""

from typing import Any

import ml_collections

from configs import digits

# (start, end) fractions of training: raster only, random only, the paper's (200, 300) of 400
# epochs, an earlier anneal, and annealing over the whole run.
SCHEDULES = ((0.0, 0.0), (1.0, 1.0), (0.5, 0.75), (0.25, 0.5), (0.0, 1.0))
NOISE_SCHEDULE = (0.5, 0.75)  # run again with seed 1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The digits config at 300 steps (warmup scaled with it), one checkpoint at the end,
  held-out raster loss every 25 steps and the digits FID at the end."""
  config = digits.get_config(arg)
  config.train.steps = 300
  config.train.log_every = 10
  config.optim.warmup_steps = 20
  config.checkpoint.every_steps = 300
  config.checkpoint.keep = 1
  config.eval.grid_every = 0
  config.eval.every_steps = 25
  return config


def get_hyper(h: Any) -> list[dict[str, Any]]:
  """One run per schedule in SCHEDULES (seed 0), and NOISE_SCHEDULE again with seed 1."""
  schedules = [*SCHEDULES, NOISE_SCHEDULE]
  return h.zipit(
    [
      h.sweep("config.randomness.anneal_start_fraction", [s for s, _ in schedules]),
      h.sweep("config.randomness.anneal_end_fraction", [e for _, e in schedules]),
      h.sweep("config.seed", [0] * len(SCHEDULES) + [1]),
    ]
  )
