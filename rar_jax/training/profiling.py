"""`config.profile`: a `jax.profiler` trace of a few training steps of the real job.

  --config.profile.start_step=100 --config.profile.num_steps=5

traces the 5 steps after the state reaches step 100 into `<workdir>/plugins/profile/<run>/`
(process 0 only), where TensorBoard's profile plugin and XProf find it next to the metrics.
A run resumed past `start_step` takes no trace. num_steps = 0 (the default) is off.

Why not clu's `periodic_actions.Profile` (clu 0.0.12), which the loop could call after each
step: it traces on every process, not process 0 only; it stops only when called with a step at
the window's end, so a window that runs past the last step, or an early exit (SIGTERM), leaves
the trace unwritten (here `close` runs in the loop's `finally`); it stops without waiting for
the last step's device work (async dispatch), so the trace can miss steps it names (here
`after_step` blocks on the state first); and it prints no console line (here one names the
steps and the folder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from rar_jax.infra import console


def validate(profile_cfg: Mapping[str, Any]) -> None:
  """Raises ValueError naming profile.start_step or profile.num_steps when negative."""
  for key in ("start_step", "num_steps"):
    if profile_cfg[key] < 0:
      raise ValueError(f"profile.{key} must be >= 0, got {profile_cfg[key]}")


class StepProfiler:
  """Starts the trace before the first profiled step and stops it after the last one."""

  def __init__(self, profile_cfg: Mapping[str, Any], workdir: str):
    self.start = profile_cfg["start_step"]
    self.stop = self.start + profile_cfg["num_steps"]
    self.workdir = workdir
    self.enabled = profile_cfg["num_steps"] > 0 and jax.process_index() == 0
    self.active = False

  def before_step(self, step: int) -> None:
    """Call with the state's step before running the next one."""
    if self.enabled and step == self.start:
      jax.profiler.start_trace(self.workdir)
      self.active = True

  def after_step(self, step: int, state: Any) -> None:
    """Call with the step just taken and its (possibly still running) state."""
    if self.active and step >= self.stop:
      jax.block_until_ready(state)  # the trace covers the device work of the last step
      self.close()
      console.info(
        "Profile of steps %d-%d in %s/plugins/profile", self.start + 1, step, self.workdir
      )

  def close(self) -> None:
    """Stops a running trace (end of training or an early exit)."""
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
