"""Attention of a few new positions against a KV cache (a sampler's token step or speculative
window) as a Pallas TPU kernel that reads only the filled part of the cache, beside the plain
reference `reference` (the model's own attention on the same cache).

Cache layout: one [R, S, D] array per layer for keys and one for values (R rows, S positions,
D = H x K, the heads side by side on the lanes). With the width on the 128 lanes and the
positions on the sublanes, nothing is padded in HBM (a [R, H, S, K] cache pads K = 80 to 128
lanes, or S = 257 to 384), and a key block of 32 positions is a whole number of tiles. S is a
multiple of `KEY_BLOCK` (`cache_length`).

Grid: (row blocks, key blocks). The key-block index map is clamped to the last block holding a
position the queries may see (start + T - 1, from SMEM), so the blocks past it are neither
fetched (the same block index twice: no new DMA) nor computed: a step at position p reads
ceil((p + 1) / 32) blocks, not the whole cache. An online softmax in fp32 runs over the blocks.

Per row, the T queries of all heads form a block-diagonal [C, D] operand (C = T x Hp rows, Hp
= H rounded up to 8; row t * Hp + h holds query t of head h on head h's lanes, zeros elsewhere),
so the logits of every head are one MXU product [C, D] x [D, 32] in the stored layout, and the
values one product [C, 32] x [32, D]; each head's output is its own lanes of its row. The
products cost about (C / 1) x more arithmetic than the per-head ones, which on a memory-bound
step the MXU absorbs (counted in full, padded as the MXU pads, in the cost records).

Shapes: R rows (batch), T new positions, H heads, K head dim, D = H K, S cache positions.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rar_jax.model import attention
from rar_jax.model.kernels import accounting
from rar_jax.model.kernels.flash_attention import MXU_DIM, target_platform

Array = jax.Array
KEY_BLOCK = 32  # cache positions per grid step: whole bf16 tiles, 1/8 of a block wasted on average
_ROWS_PER_STEP = 256  # rows x C per grid step: keeps the fp32 accumulators ~1.3 MB at D = 1280
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_F32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))  # [m, k] x [k, n]
_NT = (((1,), (1,)), ((), ()))  # [m, k] x [n, k]


def cache_length(positions: int) -> int:
  """Cache positions to allocate for `positions` fed positions: a multiple of KEY_BLOCK."""
  return -(-positions // KEY_BLOCK) * KEY_BLOCK


def _padded_heads(heads: int) -> int:
  return -(-heads // 8) * 8


def reference(q: Array, k_cache: Array, v_cache: Array, start: Array | int, scale: float) -> Array:
  """The same function in plain JAX: `attention.attention` on the cache viewed as [R, H, S, K].

  Args:
    q: [R, T, H, K] queries at positions start .. start + T - 1.
    k_cache, v_cache: [R, S, H K] cached keys and values (this call's already written).
    start: the first query position; a query at p sees the keys at positions <= p.
    scale: logit scale.

  Returns:
    [R, T, H, K] in the cache's dtype.
  """
  r, t, h, kd = q.shape
  s = k_cache.shape[1]
  k, v = (jnp.swapaxes(c.reshape(r, s, h, kd), 1, 2).astype(q.dtype) for c in (k_cache, v_cache))
  mask = jnp.arange(s)[None, :] <= (start + jnp.arange(t))[:, None]  # [T, S]
  out = attention.attention(jnp.swapaxes(q, 1, 2), k, v, mask, None, scale, 0.0)
  return jnp.swapaxes(out, 1, 2)


def _kernel(
  start_ref, q_ref, k_ref, v_ref, e_ref, qt_ref, o_ref, m_ref, l_ref, acc_ref, *, scale, t, hp
):
  """One (row block, key block j).

  q_ref [Rb, T, D]; k_ref, v_ref [Rb, KEY_BLOCK, D]; e_ref [Hp, D] f32 head-lane indicator;
  qt_ref [C, 1] int32 query offset t of each row c; o_ref [Rb, T, D];
  scratch m_ref, l_ref [Rb, C, 1], acc_ref [Rb, C, D] f32.
  """
  j = pl.program_id(1)
  start = start_ref[0]
  last = (start + t - 1) // KEY_BLOCK
  rows, d = q_ref.shape[0], q_ref.shape[2]
  c = t * hp

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, _MASK_VALUE, _F32)
    l_ref[...] = jnp.zeros(l_ref.shape, _F32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

  @pl.when(j <= last)
  def _block():
    e = e_ref[...]
    keys = j * KEY_BLOCK + lax.broadcasted_iota(jnp.int32, (c, KEY_BLOCK), 1)
    visible = keys <= start + qt_ref[...]  # [C, KEY_BLOCK]

    def row(r, carry):
      q = q_ref[r].astype(_F32)  # [T, D]
      k = k_ref[r]  # [KEY_BLOCK, D]
      q_bd = (q[:, None, :] * e[None]).reshape(c, d).astype(k.dtype)  # [C, D] block-diagonal
      s = lax.dot_general(q_bd, k, _NT, preferred_element_type=_F32) * scale  # [C, KEY_BLOCK]
      s = jnp.where(visible, s, _MASK_VALUE)
      m_prev = m_ref[r]
      m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
      p = jnp.exp(s - m_new)
      alpha = jnp.exp(m_prev - m_new)
      l_ref[r] = alpha * l_ref[r] + jnp.sum(p, axis=1, keepdims=True)
      v = v_ref[r]
      pv = lax.dot_general(p.astype(v.dtype), v, _NN, preferred_element_type=_F32)  # [C, D]
      acc_ref[r] = alpha * acc_ref[r] + pv
      m_ref[r] = m_new
      return carry

    lax.fori_loop(0, rows, row, 0)

  @pl.when(j == last)
  def _finish():
    e = e_ref[...]

    def row(r, carry):
      out = (acc_ref[r] / l_ref[r]).reshape(t, hp, d) * e[None]  # each head on its own lanes
      o_ref[r] = jnp.sum(out, axis=1).astype(o_ref.dtype)
      return carry

    lax.fori_loop(0, rows, row, 0)


def _rows_per_step(rows: int, c: int) -> int:
  """The largest divisor of `rows` with rows x C <= _ROWS_PER_STEP (at least 1)."""
  cap = max(1, _ROWS_PER_STEP // c)
  return max(n for n in range(1, min(rows, cap) + 1) if rows % n == 0)


def _reaches(start: Array | int, t: int, s: int) -> Sequence[int]:
  """The key positions a call reaches (start + T), one per run of it: exact for a concrete start,
  the enclosing loop's declaration (`accounting.reaches`), else the whole cache."""
  try:
    return [int(start) + t]
  except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
    declared = accounting.declared_reaches()
    return declared if declared is not None else [s]


def _record(r: int, t: int, hp: int, d: int, s: int, item: int, reaches: Sequence[int]) -> None:
  """Reports a call's cost, averaged over the runs it stands for: per row and visited key block,
  two [C, D] x [D, 32]-sized products (the key block counted as the MXU pads it, to 128) and
  the block's keys and values read; q read and the output written once."""
  c = t * hp
  flops, bytes_ = [], []
  for reach in reaches:
    blocks = -(-min(reach, s) // KEY_BLOCK)
    flops.append(2 * 2 * r * blocks * c * d * max(KEY_BLOCK, MXU_DIM))
    bytes_.append(r * (2 * blocks * KEY_BLOCK * d + 2 * t * d) * item)
  accounting.record("decode_attention", float(np.mean(flops)), float(np.mean(bytes_)))


def _attend(
  q: Array, k_cache: Array, v_cache: Array, start: Array | int, scale: float, reaches: Sequence[int]
) -> Array:
  """The kernel on one shard: q [R, T, H, K], caches [R, S, H K] -> [R, T, H, K]; `reaches`
  for the cost record (`_reaches`)."""
  r, t, h, kd = q.shape
  s, d = k_cache.shape[1], k_cache.shape[2]
  if d != h * kd or s % KEY_BLOCK:
    raise ValueError(f"decode attention needs caches [R, S, H*K] with S % {KEY_BLOCK} == 0, got "
                     f"{k_cache.shape} for queries {q.shape}")  # fmt: skip
  hp = _padded_heads(h)
  c = t * hp
  rows = _rows_per_step(r, c)
  _record(r, t, hp, d, s, k_cache.dtype.itemsize, reaches)
  q_flat = q.reshape(r, t, d).astype(k_cache.dtype)  # [R, T, D]
  lanes = np.arange(d) // kd
  heads = (lanes[None, :] == np.arange(hp)[:, None]).astype(np.float32)  # [Hp, D]
  offsets = np.repeat(np.arange(t, dtype=np.int32), hp)[:, None]  # [C, 1]
  scalars = jnp.reshape(jnp.asarray(start, jnp.int32), (1,))

  def key_block(i, j, start_ref):
    return i, jnp.minimum(j, (start_ref[0] + t - 1) // KEY_BLOCK), 0

  spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=1,
    grid=(r // rows, s // KEY_BLOCK),
    in_specs=[
      pl.BlockSpec((rows, t, d), lambda i, j, st: (i, 0, 0)),
      pl.BlockSpec((rows, KEY_BLOCK, d), key_block),
      pl.BlockSpec((rows, KEY_BLOCK, d), key_block),
      pl.BlockSpec((hp, d), lambda i, j, st: (0, 0)),
      pl.BlockSpec((c, 1), lambda i, j, st: (0, 0)),
    ],
    out_specs=pl.BlockSpec((rows, t, d), lambda i, j, st: (i, 0, 0)),
    scratch_shapes=[
      pltpu.VMEM((rows, c, 1), _F32),
      pltpu.VMEM((rows, c, 1), _F32),
      pltpu.VMEM((rows, c, d), _F32),
    ],
  )
  out = pl.pallas_call(
    functools.partial(_kernel, scale=scale, t=t, hp=hp),
    out_shape=jax.ShapeDtypeStruct((r, t, d), k_cache.dtype),
    grid_spec=spec,
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
    interpret=target_platform() != "tpu",
    name="decode_attention",
  )(scalars, q_flat, k_cache, v_cache, jnp.asarray(heads), jnp.asarray(offsets))
  return out.reshape(r, t, h, kd)


def decode_attention(
  q: Array,
  k_cache: Array,
  v_cache: Array,
  start: Array | int,
  scale: float,
  batch_axes: tuple[str, ...] = (),
  head_axes: tuple[str, ...] = (),
) -> Array:
  """softmax(q k^T * scale) v of T new positions against the cache, each query seeing the
  positions up to its own; the same function as `reference`.

  Args:
    q: [R, T, H, K] queries at positions start .. start + T - 1 (token-major, as the cache).
    k_cache, v_cache: [R, S, H K] cached keys and values, this call's already written; S a
      multiple of KEY_BLOCK (`cache_length`).
    start: the first query position (a traced int32 scalar in a sampler's loop).
    scale: logit scale.
    batch_axes, head_axes: mesh axes the rows and the heads are split over under the active
      mesh (`jax.shard_map`, one kernel per shard); empty: not split.

  Returns:
    [R, T, H, K] in the cache's dtype.
  """
  mesh = jax.sharding.get_abstract_mesh()
  reaches = _reaches(start, q.shape[1], k_cache.shape[1])
  if mesh.empty or not (batch_axes or head_axes):
    return _attend(q, k_cache, v_cache, start, float(scale), reaches)
  rows, heads = batch_axes or None, head_axes or None
  q_spec = jax.sharding.PartitionSpec(rows, None, heads, None)
  cache_spec = jax.sharding.PartitionSpec(rows, None, heads)
  start = jnp.asarray(start, jnp.int32)
  return jax.shard_map(
    lambda q, k, v, st: _attend(q, k, v, st, float(scale), reaches),
    in_specs=(q_spec, cache_spec, cache_spec, jax.sharding.PartitionSpec()),
    out_specs=q_spec,
    check_vma=False,
  )(q, k_cache, v_cache, start)
