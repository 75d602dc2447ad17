"""The training job's console line, one per `train.log_every` steps:

  11:20:14 step   150/800  loss 1.847  acc 0.512  r 1.00  lr 9.9e-04  212 img/s  ETA 3m05s

(TensorBoard gets every metric; this line is what a person reads while the job runs.)
"""

from __future__ import annotations

from collections.abc import Mapping

from rar_jax.infra import console


class ProgressLine:
  """Formats and prints the line; the ETA (`console.Progress`) comes from the wall time since
  the previous line."""

  def __init__(self, total_steps: int, first_step: int):
    self.total_steps = total_steps
    self._progress = console.Progress(total_steps, "step", first_step)

  def __call__(self, step: int, values: Mapping[str, float]) -> str:
    """Prints the line of `step` (process 0) and returns it. values: the step's metrics."""
    _, eta = self._progress.mark(step)
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
    parts.append(f"ETA {eta}")
    line = "  ".join(parts)
    console.info("%s", line)
    return line
