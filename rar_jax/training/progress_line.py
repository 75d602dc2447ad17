"""The training job's console line, one per `train.log_every` steps:

  11:20:14 step   150/800  loss 1.847  acc 0.512  r 1.00  lr 9.9e-04  212 img/s  ETA 3m05s

(TensorBoard gets every metric; this line is what a person reads while the job runs.)
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from rar_jax.infra import console


def format_duration(seconds: float) -> str:
  """42s, 3m05s, 2h07m, 3d04h."""
  s = max(0, round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class ProgressLine:
  """Formats and prints the line; the ETA comes from the wall time since the previous line."""

  def __init__(self, total_steps: int, first_step: int):
    self.total_steps = total_steps
    self._last = (first_step, time.perf_counter())

  def __call__(self, step: int, values: Mapping[str, float]) -> str:
    """Prints the line of `step` (process 0) and returns it. values: the step's metrics."""
    now = time.perf_counter()
    last_step, last_time = self._last
    self._last = (step, now)
    per_step = (now - last_time) / max(1, step - last_step)
    width = len(str(self.total_steps))
    parts = [
      f"step {step:>{width}}/{self.total_steps}",
      f"loss {values['loss']:.3f}",
      f"acc {values['accuracy']:.3f}",
      f"r {values['random_ratio']:.2f}",
      f"lr {values['learning_rate']:.1e}",
    ]
    if "images_per_s" in values:
      parts.append(f"{values['images_per_s']:.0f} img/s")
    parts.append(f"ETA {format_duration(per_step * (self.total_steps - step))}")
    line = "  ".join(parts)
    console.info("%s", line)
    return line
