"""Inverted dropout from counter-based hash bits.

The mask of element i depends only on (seeds, i): any sharding of the array gives the same mask,
and a backward pass can recompute it instead of storing it. The hash (the murmur3 finaliser) is
a few integer ops per element where threefry costs ~80, which is most of dropout's cost on CPU.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def seeds_from_key(key: Array) -> Array:
  """uint32[2] hash seeds drawn from a PRNG key."""
  return jax.random.bits(key, (2,), jnp.uint32)


def _mix32(x: Array) -> Array:
  """The murmur3 finaliser: a bijection of uint32 that spreads every input bit."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def bits_from_seeds(
  seeds: Array,
  shape: tuple[int, ...],
  full_shape: tuple[int, ...] | None = None,
  start: tuple[int, ...] | None = None,
) -> Array:
  """uint32 bits of `shape`: a hash of each element's global index under `seeds` (uint32[2]).

  With `full_shape` and `start`, the bits are those of the block of a `full_shape` array that
  begins at `start` (so a computation split into blocks draws the same mask as a whole one).
  """
  full_shape = shape if full_shape is None else full_shape
  start = (0,) * len(shape) if start is None else start
  inner = jnp.zeros(shape, jnp.uint32)  # index within a sample (the leading axis mixed apart,
  stride = 1  # so no index wraps around 2^32 at any batch size)
  for axis in reversed(range(1, len(shape))):
    index = jax.lax.broadcasted_iota(jnp.uint32, shape, axis) + jnp.uint32(start[axis])
    inner = inner + index * jnp.uint32(stride)
    stride *= full_shape[axis]
  lead = jax.lax.broadcasted_iota(jnp.uint32, shape, 0) + jnp.uint32(start[0])
  return _mix32(_mix32(inner + seeds[0]) ^ _mix32(lead + seeds[1]))


def drop(
  x: Array,
  seeds: Array | None,
  rate: float,
  full_shape: tuple[int, ...] | None = None,
  start: tuple[int, ...] | None = None,
) -> Array:
  """Inverted dropout of x: zero with probability `rate`, else x / (1 - rate). A no-op without
  seeds or at rate 0. `full_shape`, `start`: x is that block of a larger array (the mask is
  the larger array's)."""
  if seeds is None or rate == 0.0:
    return x
  bits = bits_from_seeds(seeds, x.shape, full_shape, start)
  keep = bits >= jnp.uint32(round(rate * 2**32))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def gelu_then_drop(h: Array, seeds: Array | None, rate: float) -> Array:
  """drop(exact GELU(h)). Its backward keeps only h and recomputes the GELU derivative and the
  mask (autodiff would store the GELU's intermediates and the mask as well)."""
  return drop(jax.nn.gelu(h, approximate=False), seeds, rate)


def _gelu_then_drop_fwd(h, seeds, rate):
  return gelu_then_drop(h, seeds, rate), (h, seeds)


def _gelu_then_drop_bwd(rate, residuals, dy):
  h, seeds = residuals
  x = h.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(x * (2.0**-0.5)))
  pdf = jnp.exp(-0.5 * x * x) * (2.0 * jnp.pi) ** -0.5
  return (drop(dy, seeds, rate) * (cdf + x * pdf).astype(dy.dtype), None)


gelu_then_drop.defvjp(_gelu_then_drop_fwd, _gelu_then_drop_bwd)
