"""FLOP accounting and the training metrics written through CLU.

Model FLOPs follow the usual convention (MaxText, PaLM appendix B): 6 x matmul parameters per
token (forward + backward) plus causal attention; in RAR the AdaLN layers run per token, so
their matmuls count like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers

from rar_jax.infra import chips
from rar_jax.model.presets import ModelConfig


def matmul_params_per_token(cfg: ModelConfig) -> int:
  """Weights each token multiplies through: per block qkv, proj, fc1, fc2 and the 6-way AdaLN;
  then the final 2-way AdaLN and the code head. (Embedding lookups are not matmuls.)"""
  d, m = cfg.width, cfg.mlp_dim
  per_block = 3 * d * d + d * d + 2 * d * m + 6 * d * d
  return cfg.depth * per_block + 2 * d * d + d * cfg.codebook_size


def forward_flops_per_sequence(cfg: ModelConfig) -> float:
  """Forward FLOPs of one training sequence of L + 2 positions, causal attention included."""
  t = cfg.num_positions
  dense = 2.0 * matmul_params_per_token(cfg) * t
  # QK^T and PV over the causal half: 2 matmuls x 2 FLOPs x (t^2 / 2) pairs x width, per layer.
  attention = 2.0 * t * t * cfg.width * cfg.depth
  return dense + attention


def train_flops_per_sequence(cfg: ModelConfig) -> float:
  """Forward + backward (3 x forward)."""
  return 3.0 * forward_flops_per_sequence(cfg)


class TrainMetrics:
  """Writes step metrics from process 0, reading device values one step late.

  `push(step, device_metrics)` queues this step's metrics (still on device) and writes the
  previous step's, so the host never waits for the step it just dispatched.
  """

  def __init__(
    self,
    writer: metric_writers.MetricWriter,
    cfg: ModelConfig,
    global_batch: int,
    every: int,
    on_log: Callable[[int, Mapping[str, float]], object] | None = None,
  ):
    """on_log(step, values): called with what is written every `every` steps (the console)."""
    self.writer = writer
    self.every = every
    self.on_log = on_log
    self.flops_per_step = train_flops_per_sequence(cfg) * global_batch
    self.global_batch = global_batch
    self.tokens_per_step = global_batch * cfg.seq_len
    self.num_devices = jax.device_count()
    self.peak = chips.peak_tflops(jax.devices()[0].device_kind)
    self._pending: tuple[int, Mapping[str, Any], float] | None = None
    self._last_time = time.perf_counter()

  def push(self, step: int, device_metrics: Mapping[str, Any]) -> dict[str, float] | None:
    """Queues step's metrics; returns the previous step's host values when it was written."""
    now = time.perf_counter()
    step_time, self._last_time = now - self._last_time, now
    previous, self._pending = self._pending, (step, device_metrics, step_time)
    return self._write(previous) if previous else None

  def flush(self) -> dict[str, float] | None:
    """Writes the queued metrics (end of training)."""
    previous, self._pending = self._pending, None
    return self._write(previous) if previous else None

  def _write(self, item: tuple[int, Mapping[str, Any], float]) -> dict[str, float]:
    step, device_metrics, step_time = item
    values = {k: float(v) for k, v in jax.device_get(dict(device_metrics)).items()}
    if not all(np.isfinite(v) for v in values.values()):
      bad = sorted(k for k, v in values.items() if not np.isfinite(v))
      raise FloatingPointError(f"non-finite {', '.join(bad)} at step {step}: {values}")
    if step % self.every == 0:
      scalars = {**values, **self.throughput(step_time)}
      self.writer.write_scalars(step, scalars)
      if self.on_log is not None:
        self.on_log(step, scalars)
    return values

  def throughput(self, step_time: float) -> dict[str, float]:
    tflops_per_device = self.flops_per_step / step_time / self.num_devices / 1e12
    out = {
      "step_time_s": step_time,
      "images_per_s": self.global_batch / step_time,
      "tokens_per_s": self.tokens_per_step / step_time,
      "model_tflops_per_device": tflops_per_device,
    }
    if self.peak:
      out["mfu"] = tflops_per_device / self.peak
    return out
