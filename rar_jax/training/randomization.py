"""The training-time randomness schedule of RAR: the annealed randomness ratio r(step) that
decides how often a sample's order is permuted (`model.token_orders`), and class-label dropout
for classifier-free guidance.

Jittable, drawing from explicit PRNG keys (no host randomness).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def randomness_ratio(step: Array | int, anneal_start: int, anneal_end: int) -> Array:
  """r(step): 1 before anneal_start, linear to 0 at anneal_end, 0 from then on.

  This is the official schedule; with anneal_start == anneal_end it switches from 1 to 0 at
  that step, so (0, 0) is raster-only and (total, total) random-only training.
  """
  step = jnp.asarray(step, jnp.float32)
  linear = 1.0 - (step - anneal_start) / max(anneal_end - anneal_start, 1)
  return jnp.where(step < anneal_start, 1.0, jnp.where(step >= anneal_end, 0.0, linear))


def anneal_steps(cfg: Mapping[str, Any], total_steps: int) -> tuple[int, int]:
  """Resolves a `randomness` config group to (start, end) in optimizer steps.

  Each end is `anneal_<end>_steps` when that is set, else `anneal_<end>_fraction` x total.

  Raises:
    ValueError: naming the key when neither form is set, a fraction is outside [0, 1] or a
      step count is negative, or when the end comes before the start.
  """
  bounds = []
  for name in ("anneal_start", "anneal_end"):
    steps, fraction = cfg.get(f"{name}_steps"), cfg.get(f"{name}_fraction")
    if steps is None and fraction is None:
      raise ValueError(f"set randomness.{name}_fraction (or randomness.{name}_steps)")
    if steps is None and not 0.0 <= fraction <= 1.0:
      raise ValueError(f"randomness.{name}_fraction must be in [0, 1], got {fraction!r}")
    if steps is not None and steps < 0:
      raise ValueError(f"randomness.{name}_steps must be >= 0, got {steps!r}")
    bounds.append(int(steps) if steps is not None else round(fraction * total_steps))
  start, end = bounds
  if end < start:
    raise ValueError(f"randomness anneal end ({end} steps) is before its start ({start} steps)")
  return start, end


def check_label_dropout(drop_prob: float) -> None:
  """ValueError naming `randomness.label_dropout` unless it is a probability in [0, 1)."""
  numeric = isinstance(drop_prob, int | float) and not isinstance(drop_prob, bool)
  if not numeric or not 0.0 <= drop_prob < 1.0:
    raise ValueError(f"randomness.label_dropout must be in [0, 1), got {drop_prob!r}")


def drop_labels(key: Array, class_ids: Array, drop_prob: float, null_class: int) -> Array:
  """Replaces each class index by the null class with probability drop_prob (CFG training)."""
  drop = jax.random.uniform(key, class_ids.shape) < drop_prob
  return jnp.where(drop, null_class, class_ids)
