"""Per-sample generation orders of RAR: a random permutation with probability r, else raster,
and the gather that puts a sequence in that order.

Jittable, drawing from explicit PRNG keys (no host randomness).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def sample_orders(key: Array, batch: int, seq_len: int, random_ratio: Array | float) -> Array:
  """Each sample's generation order: a uniform random permutation with probability r, else raster.

  Args:
    key: PRNG key.
    batch: number of samples B.
    seq_len: number of tokens L.
    random_ratio: r in [0, 1], a scalar (may be traced).

  Returns:
    [B, L] int32 orders; orders[b, i] is the raster position generated at step i.
  """
  use_key, perm_key = jax.random.split(key)
  use_random = jax.random.uniform(use_key, (batch,)) < random_ratio  # [B]
  perms = jnp.argsort(jax.random.uniform(perm_key, (batch, seq_len)), axis=1)  # [B, L]
  raster = jnp.arange(seq_len, dtype=jnp.int32)[None, :]
  return jnp.where(use_random[:, None], perms.astype(jnp.int32), raster)


def permute(x: Array, orders: Array) -> Array:
  """x[b, orders[b, i]] for x [B, L, ...] and orders [B, L]."""
  idx = orders.reshape(orders.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)
