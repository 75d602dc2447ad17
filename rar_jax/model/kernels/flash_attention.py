"""Causal self-attention with dropout as fused Pallas TPU kernels (flash-style), forward and
backward, beside the plain reference `rar_jax.model.attention`.

Blocks of 128 queries meet blocks of 128 keys with an online softmax in fp32; blocks above the
causal diagonal are never visited (each grid step loops over only the key blocks its queries
see). No [B, H, T, S] array reaches HBM: the forward saves the output and one logsumexp per
query row, and the backward recomputes the probabilities block by block in one kernel that
forms the key and value gradients of a key block in registers and adds its share of the query
gradient to a per-sample accumulator in VMEM (so the logits and their gradient are computed
once per block pair, not once for dq and again for dk and dv).

Layout: every operand and result is transposed, [B, H, D, T] with the positions on the 128
lanes (the layout XLA itself keeps q, k and v in, so no copy happens around the kernels); the
logits are formed as k q^T (a transposed-operand product on the MXU), so queries sit on the
lanes of every [keys, queries] tile, the per-query statistics (max, sum, logsumexp) are
lane-dense rows [1, queries], and the head dim (48 to 88 in the presets) is a full-array block
dimension.

The kernels take the arrays unpadded (T = 258): the grid has ceil(T / 128) blocks (three query
blocks and six of the nine [128, 128] block pairs) and the last one runs past the array's end,
where Pallas reads unspecified values (NaN in interpret mode) and drops the writes. Every block
that can reach past T selects zeros for the positions beyond it before they meet a matmul, and
masks their probabilities and logit gradients, so nothing of them reaches a valid row, and no
pad or slice of the sequence happens in HBM. Each grid step holds every head of one (batch,
block) pair and loops over the heads inside the kernel, so the grid has B x ceil(T/128) steps.

Attention dropout is generated inside the kernels from a counter-based hash of (seeds, batch,
head, query, key) in int32 arithmetic (`keep_bits`): the same bits as `dropout.bits_from_seeds`
over the [B, H, T, S] array with the global batch and head indices, hence the same mask as
the reference path, regenerated identically by the backward kernels.

On a TPU the kernels compile with Mosaic; elsewhere they run in Pallas' interpret mode (the
CPU tests). The platform is the active mesh's (`target_platform`), so a program compiled ahead of
time for a TPU topology from a CPU host gets the real kernels. XLA's cost model does not see into
the kernels, so every traced call reports its FLOPs and HBM bytes to `accounting`.

Shapes: B batch, H heads, T positions (queries = keys), D head dim, P = T rounded up to 128
(the span the blocks cover).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rar_jax.model.kernels import accounting

Array = jax.Array
BLOCK = 128  # queries and keys per block: one lane width, one MXU tile on v5p
MXU_DIM = 128  # the head dim is padded to this on the MXU (counted so in the FLOPs)
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: no inf - inf in the softmax
_F32 = jnp.float32
_NN = (((1,), (0,)), ((), ()))  # [m, k] x [k, n]
_NT = (((1,), (1,)), ((), ()))  # [m, k] x [n, k]
_TN = (((0,), (0,)), ((), ()))  # [k, m] x [k, n]


def _i32(value: int) -> np.int32:
  """The int32 with the bit pattern of the uint32 `value`."""
  return np.array(value & 0xFFFFFFFF, np.uint32).view(np.int32)


def _mix32(x: Array) -> Array:
  """`dropout._mix32` (the murmur3 finaliser) on int32 bit patterns: logical shifts and
  wrapping products give the same bits as the uint32 version."""
  x = x ^ lax.shift_right_logical(x, jnp.int32(16))
  x = x * _i32(0x85EBCA6B)
  x = x ^ lax.shift_right_logical(x, jnp.int32(13))
  x = x * _i32(0xC2B2AE35)
  return x ^ lax.shift_right_logical(x, jnp.int32(16))


def keep_bits(seed0: Array, batch_word: Array, head: Array, query: Array, key: Array, t: int):
  """int32 bit patterns of `dropout.bits_from_seeds(seeds, (B, H, t, t))[b, head, query, key]`.

  Args:
    seed0: int32 scalar, seeds[0] as int32.
    batch_word: int32 scalar, `_mix32(b + seeds[1])` for the global batch index b.
    head: int32 scalar, the global head index.
    query, key: int32 arrays (broadcastable) of query and key positions.
    t: the sequence length (queries = keys).
  """
  inner = (head * t + query) * t + key
  return _mix32(_mix32(inner + seed0) ^ batch_word)


def keep_threshold(rate: float) -> np.int32:
  """`keep_bits` >= this (as signed int32 after flipping the top bit) keeps an element with
  probability 1 - rate, as `dropout.drop` (uint32 bits >= round(rate * 2^32))."""
  return np.int32(round(rate * 2**32) - 2**31)


def keep_mask(bits: Array, rate: float) -> Array:
  """bool mask: True where an element with these `keep_bits` survives dropout at `rate`."""
  return (bits ^ _i32(0x80000000)) >= keep_threshold(rate)


def batch_word(seed1: Array, batch: Array) -> Array:
  """The per-sample word of the hash: `_mix32(batch + seeds[1])` in int32."""
  return _mix32(batch + seed1)


def reference_mask(seeds: Array, shape: tuple[int, int, int, int], rate: float, offsets=(0, 0)):
  """The kernels' dropout keep-mask [B, H, T, T] materialized in plain JAX (for tests).

  Args:
    seeds: uint32[2] (`dropout.seeds_from_key`).
    shape: (B, H, T, T) of this shard; offsets: its global (batch, head) offsets.
  """
  s = lax.bitcast_convert_type(seeds, jnp.int32)
  b, h, t, _ = shape
  bi = jnp.arange(b, dtype=jnp.int32)[:, None, None, None] + offsets[0]
  hi = jnp.arange(h, dtype=jnp.int32)[None, :, None, None] + offsets[1]
  qi = jnp.arange(t, dtype=jnp.int32)[None, None, :, None]
  ki = jnp.arange(t, dtype=jnp.int32)[None, None, None, :]
  return keep_mask(keep_bits(s[0], batch_word(s[1], bi), hi, qi, ki, t), rate)


# ---------------------------------------------------------------------------------------------
# Kernels. Scalars (SMEM): [seeds[0], seeds[1], batch offset, head offset] of this shard.


def _block_keep(scalars, rate, t, b, h, key0, query0):
  """bool [BLOCK keys, BLOCK queries] keep-mask of the block at (key0, query0)."""
  keys = key0 + lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 0)
  queries = query0 + lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 1)
  word = batch_word(scalars[1], scalars[2] + b)
  return keep_mask(keep_bits(scalars[0], word, scalars[3] + h, queries, keys, t), rate)


def _causal(key0, query0):
  """bool [BLOCK keys, BLOCK queries]: key <= query."""
  keys = key0 + lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 0)
  queries = query0 + lax.broadcasted_iota(jnp.int32, (BLOCK, BLOCK), 1)
  return keys <= queries


def _inside(start, t: int, shape: tuple[int, int], axis: int) -> Array:
  """bool `shape`: whether position start + (index along `axis`) lies before the sequence end t."""
  return start + lax.broadcasted_iota(jnp.int32, shape, axis) < t


def _zero_beyond(x: Array, start, t: int, axis: int) -> Array:
  """x with the positions past the sequence end t (along `axis`, the first at `start`) set to
  zero: a block read past the array's end holds unspecified values there, which a matmul would
  carry into valid rows even where their probabilities are zero."""
  return jnp.where(_inside(start, t, x.shape, axis), x, jnp.zeros((), x.dtype))


def _fwd_kernel(scalars, q_t_ref, k_t_ref, v_t_ref, o_t_ref, lse_ref, *, scale, rate, t):
  """One (batch, query block): every head against key blocks 0..i.

  q_t_ref [1, H, D, BLOCK]; k_t_ref, v_t_ref [1, H, D, P];
  o_t_ref [1, H, D, BLOCK] (output, transposed); lse_ref [1, H, 1, BLOCK] (logsumexp).
  Keys past t occur only in the last diagonal block, where the causal mask removes them from
  every valid query; their values are zeroed there.
  """
  b, i = pl.program_id(0), pl.program_id(1)
  heads, d = q_t_ref.shape[1], q_t_ref.shape[2]
  query0 = i * BLOCK

  def head(h, carry):
    q_t = q_t_ref[0, h]  # [D, BLOCK]

    def key_block(j, state, diagonal=False):
      m, total, acc = state  # running max, sum [1, BLOCK]; output [D, BLOCK]
      key0 = pl.multiple_of(j * BLOCK, BLOCK)
      k_t = k_t_ref[0, h, :, pl.ds(key0, BLOCK)]  # [D, BLOCK]
      s_t = lax.dot_general(k_t, q_t, _TN, preferred_element_type=_F32) * scale  # [keys, queries]
      if diagonal:  # the causal mask cuts only the diagonal block
        s_t = jnp.where(_causal(key0, query0), s_t, _MASK_VALUE)
      m_new = jnp.maximum(m, jnp.max(s_t, axis=0, keepdims=True))
      p = jnp.exp(s_t - m_new)
      alpha = jnp.exp(m - m_new)
      total = alpha * total + jnp.sum(p, axis=0, keepdims=True)
      if rate > 0.0:
        p = jnp.where(_block_keep(scalars, rate, t, b, h, key0, query0), p, 0.0)
      v_t = v_t_ref[0, h, :, pl.ds(key0, BLOCK)]  # [D, BLOCK]
      if diagonal and t % BLOCK:
        v_t = _zero_beyond(v_t, key0, t, 1)
      acc = alpha * acc + lax.dot_general(
        v_t, p.astype(v_t.dtype), _NN, preferred_element_type=_F32
      )
      return m_new, total, acc

    init = (
      jnp.full((1, BLOCK), _MASK_VALUE, _F32),
      jnp.zeros((1, BLOCK), _F32),
      jnp.zeros((d, BLOCK), _F32),
    )
    state = lax.fori_loop(0, i, key_block, init)
    m, total, acc = key_block(i, state, diagonal=True)
    o_t_ref[0, h] = (acc * (1.0 / ((1.0 - rate) * total))).astype(o_t_ref.dtype)
    lse_ref[0, h] = m + jnp.log(total)
    return carry

  lax.fori_loop(0, heads, head, 0)


def _probs_and_dlogits(
  scalars, rate, t, scale, b, h, key0, query0, k_t, v_t, q_t, do_t, lse, di, diagonal, edge
):
  """The recomputed block: dropped probabilities [keys, queries] (dv's operand) and the logit
  gradient times scale [keys, queries]; both zero above the causal diagonal if `diagonal` and
  for queries or keys past t if `edge` (the block may reach past the sequence end)."""
  s_t = lax.dot_general(k_t, q_t, _TN, preferred_element_type=_F32) * scale
  p = jnp.exp(s_t - lse)  # [keys, queries]
  dp = lax.dot_general(v_t, do_t, _TN, preferred_element_type=_F32)  # d(dropped probs)
  dropped = p
  if rate > 0.0:
    keep = _block_keep(scalars, rate, t, b, h, key0, query0)
    dropped = jnp.where(keep, p * (1.0 / (1.0 - rate)), 0.0)
    dp = jnp.where(keep, dp * (1.0 / (1.0 - rate)), 0.0)
  ds = p * (dp - di) * scale
  valid = None
  if diagonal:
    valid = _causal(key0, query0)
  if edge:
    inside = _inside(query0, t, (BLOCK, BLOCK), 1) & _inside(key0, t, (BLOCK, BLOCK), 0)
    valid = inside if valid is None else valid & inside
  if valid is not None:  # selects, not products: the discarded entries may be NaN
    dropped, ds = jnp.where(valid, dropped, 0.0), jnp.where(valid, ds, 0.0)
  return dropped, ds


def _bwd_kernel(
  scalars,
  k_t_ref,
  v_t_ref,
  q_t_ref,
  do_t_ref,
  lse_ref,
  di_ref,
  dk_t_ref,
  dv_t_ref,
  dq_t_ref,
  dq_acc,
  *,
  scale,
  rate,
  t,
):
  """One (batch, key block j): every head against query blocks j..end. The grid runs the key
  blocks of a sample in order: dq_acc, f32 [H, D, P] in VMEM, collects every block pair's share
  of the query gradient and is written out after the sample's last key block.

  k_t_ref, v_t_ref [1, H, D, BLOCK]; q_t_ref, do_t_ref [1, H, D, P]; lse_ref, di_ref [1, H, 1, P];
  dk_t_ref, dv_t_ref [1, H, D, BLOCK]; dq_t_ref [1, H, D, P]. When T is not whole blocks, the
  positions past t are zeroed in every operand block that can hold them, and the probabilities
  and logit gradients masked there, so they reach no valid row of any gradient.
  """
  b, j = pl.program_id(0), pl.program_id(1)
  heads, d = k_t_ref.shape[1], k_t_ref.shape[2]
  blocks = q_t_ref.shape[3] // BLOCK
  key0 = j * BLOCK
  edge = bool(t % BLOCK)

  @pl.when(j == 0)
  def _():
    dq_acc[...] = jnp.zeros(dq_acc.shape, dq_acc.dtype)

  def head(h, carry):
    k_t, v_t = k_t_ref[0, h], v_t_ref[0, h]  # [D, BLOCK]
    if edge:
      k_t, v_t = _zero_beyond(k_t, key0, t, 1), _zero_beyond(v_t, key0, t, 1)

    def query_block(i, grads, diagonal=False):
      dk_t, dv_t = grads  # [D, keys]
      query0 = pl.multiple_of(i * BLOCK, BLOCK)
      q_t = q_t_ref[0, h, :, pl.ds(query0, BLOCK)]  # [D, BLOCK]
      do_t = do_t_ref[0, h, :, pl.ds(query0, BLOCK)]
      lse = lse_ref[0, h, :, pl.ds(query0, BLOCK)]  # [1, BLOCK]
      di = di_ref[0, h, :, pl.ds(query0, BLOCK)]
      if edge:
        q_t, do_t = _zero_beyond(q_t, query0, t, 1), _zero_beyond(do_t, query0, t, 1)
      dropped, ds = _probs_and_dlogits(
        scalars, rate, t, scale, b, h, key0, query0, k_t, v_t, q_t, do_t, lse, di, diagonal, edge
      )
      ds = ds.astype(q_t.dtype)
      dv_t = dv_t + lax.dot_general(
        do_t, dropped.astype(do_t.dtype), _NT, preferred_element_type=_F32
      )
      dk_t = dk_t + lax.dot_general(q_t, ds, _NT, preferred_element_type=_F32)
      dq_acc[h, :, pl.ds(query0, BLOCK)] += lax.dot_general(
        k_t, ds, _NN, preferred_element_type=_F32
      )  # [D, queries]
      return dk_t, dv_t

    zeros = jnp.zeros((d, BLOCK), _F32)
    grads = query_block(j, (zeros, zeros), diagonal=True)
    dk_t, dv_t = lax.fori_loop(j + 1, blocks, query_block, grads)
    dk_t_ref[0, h] = dk_t.astype(dk_t_ref.dtype)
    dv_t_ref[0, h] = dv_t.astype(dv_t_ref.dtype)
    return carry

  lax.fori_loop(0, heads, head, 0)

  @pl.when(j == pl.num_programs(1) - 1)
  def _():
    dq_t_ref[0] = dq_acc[...].astype(dq_t_ref.dtype)


# ---------------------------------------------------------------------------------------------
# Calls.


def target_platform() -> str:
  """The platform the program being traced is for: the active mesh's devices' (an ahead-of-time
  compile for a TPU topology from a CPU host), else the default backend."""
  device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def _call(
  kernel, out_shape, grid, in_specs, out_specs, name, scalars, *args, scratch=(), ordered=False
):
  """pallas_call for the target platform: Mosaic on a TPU, Pallas' interpret mode elsewhere
  (the CPU tests). `ordered`: the second grid axis runs in order (it carries `scratch`)."""
  spec = pltpu.PrefetchScalarGridSpec(
    num_scalar_prefetch=1,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    scratch_shapes=list(scratch),
  )
  semantics = ("parallel", "arbitrary" if ordered else "parallel")
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid_spec=spec,
    compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
    interpret=target_platform() != "tpu",
    name=name,
  )(scalars, *args)


def _span(t: int) -> int:
  """P: the positions the blocks cover, t rounded up to whole blocks."""
  return -(-t // BLOCK) * BLOCK


def _causal_pairs(p: int) -> int:
  n = p // BLOCK
  return n * (n + 1) // 2


def tiled_bytes(shape: tuple[int, ...], dtype) -> int:
  """HBM bytes of an array in the TPU's tiled layout: the last two dimensions rounded up to
  whole (8 x 32 bits / itemsize, 128) tiles (bf16 [258, 48] takes [272, 128] of space)."""
  item = jnp.dtype(dtype).itemsize
  rows, cols = (1, *shape)[-2:]
  sublanes = 8 * 4 // item
  lead = int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1
  return lead * (-(-rows // sublanes) * sublanes) * (-(-cols // 128) * 128) * item


def _record(name: str, b: int, h: int, p: int, d: int, matmuls: int, bytes_: float) -> None:
  """Reports a call's cost: `matmuls` [BLOCK, BLOCK, D] products per causal block pair and head
  (the head dim counted as the MXU pads it, to a multiple of 128), and its HBM bytes."""
  d_mxu = -(-d // MXU_DIM) * MXU_DIM
  flops = 2 * BLOCK * BLOCK * d_mxu * matmuls * _causal_pairs(p) * b * h
  accounting.record(name, flops, bytes_)


def _forward(q_t, k_t, v_t, scalars, scale, rate):
  """o_t [B, H, D, T] (q's dtype) and lse [B, H, 1, T] f32 from q^T, k^T, v^T (unpadded)."""
  b, h, d, t = q_t.shape
  p = _span(t)
  # q read once, k and v once per sample (their block index changes only with b), o written.
  _record(
    "flash_attention_fwd", b, h, p, d, 2, 4 * tiled_bytes(q_t.shape, q_t.dtype) + b * h * t * 4
  )
  kernel = functools.partial(_fwd_kernel, scale=scale, rate=rate, t=t)
  return _call(
    kernel,
    (jax.ShapeDtypeStruct((b, h, d, t), q_t.dtype), jax.ShapeDtypeStruct((b, h, 1, t), _F32)),
    (b, p // BLOCK),
    [
      pl.BlockSpec((1, h, d, BLOCK), lambda bi, i, s: (bi, 0, 0, i)),
      pl.BlockSpec((1, h, d, p), lambda bi, i, s: (bi, 0, 0, 0)),
      pl.BlockSpec((1, h, d, p), lambda bi, i, s: (bi, 0, 0, 0)),
    ],
    [
      pl.BlockSpec((1, h, d, BLOCK), lambda bi, i, s: (bi, 0, 0, i)),
      pl.BlockSpec((1, h, 1, BLOCK), lambda bi, i, s: (bi, 0, 0, i)),
    ],
    "flash_attention_fwd",
    scalars,
    q_t,
    k_t,
    v_t,
  )


def _backward(q_t, k_t, v_t, o_t, lse, do_t, scalars, scale, rate):
  """dq_t, dk_t, dv_t [B, H, D, T] from the residuals (unpadded, transposed)."""
  b, h, d, t = q_t.shape
  p = _span(t)
  di = jnp.sum(do_t.astype(_F32) * o_t.astype(_F32), axis=2, keepdims=True)  # [B, H, 1, T]
  array = tiled_bytes(q_t.shape, q_t.dtype)
  whole = pl.BlockSpec((1, h, d, p), lambda bi, j, s: (bi, 0, 0, 0))
  blocked = pl.BlockSpec((1, h, d, BLOCK), lambda bi, j, s: (bi, 0, 0, j))
  stats = pl.BlockSpec((1, h, 1, p), lambda bi, j, s: (bi, 0, 0, 0))
  # k, v read and dk, dv written once; q, do, lse, di read and dq written once per sample.
  # Five [BLOCK, BLOCK, D] products per block pair: logits, d(probs), dv, dk, dq.
  _record("flash_attention_bwd", b, h, p, d, 5, 7 * array + b * h * t * 8)
  out = jax.ShapeDtypeStruct(q_t.shape, q_t.dtype)
  dk_t, dv_t, dq_t = _call(
    functools.partial(_bwd_kernel, scale=scale, rate=rate, t=t),
    (out, out, out),
    (b, p // BLOCK),
    [blocked, blocked, whole, whole, stats, stats],
    [blocked, blocked, whole],
    "flash_attention_bwd",
    scalars,
    k_t,
    v_t,
    q_t,
    do_t,
    lse,
    di,
    scratch=[pltpu.VMEM((h, d, p), _F32)],
    ordered=True,
  )
  return dq_t, dk_t, dv_t


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q: Array, k: Array, v: Array, scalars: Array, scale: float, rate: float) -> Array:
  return _attention_fwd(q, k, v, scalars, scale, rate)[0]


def _attention_fwd(q, k, v, scalars, scale, rate):
  q_t, k_t, v_t = (jnp.swapaxes(x, 2, 3) for x in (q, k, v))  # [B, H, D, T]
  o_t, lse = _forward(q_t, k_t, v_t, scalars, scale, rate)
  out = jnp.swapaxes(o_t, 2, 3)  # [B, H, T, D]
  return out.astype(v.dtype), (q_t, k_t, v_t, o_t, lse, scalars)


def _attention_bwd(scale, rate, residuals, dout):
  q_t, k_t, v_t, o_t, lse, scalars = residuals
  do_t = jnp.swapaxes(dout, 2, 3).astype(q_t.dtype)  # [B, H, D, T]
  grads = _backward(q_t, k_t, v_t, o_t, lse, do_t, scalars, scale, rate)
  dq, dk, dv = (jnp.swapaxes(g, 2, 3) for g in grads)
  return dq, dk, dv, np.zeros(scalars.shape, jax.dtypes.float0)


_attention.defvjp(_attention_fwd, _attention_bwd)


def attention(
  q: Array,
  k: Array,
  v: Array,
  seeds: Array | None,
  scale: float,
  rate: float,
  offsets: tuple[Array | int, Array | int] = (0, 0),
) -> Array:
  """Causal self-attention softmax(q k^T * scale) with inverted dropout on the probabilities,
  times v, as `rar_jax.model.attention.attention` with a causal mask (and its dropout mask).

  Args:
    q, k, v: [B, H, T, D] (one dtype; bf16 or f32).
    seeds: uint32[2] dropout seeds (`dropout.seeds_from_key`), or None for no dropout.
    scale: logit scale; rate: dropout probability in [0, 1).
    offsets: global (batch, head) index of element [0, 0] (for a shard of a larger array, so
      the mask is the whole array's).

  Returns:
    [B, H, T, D] in v's dtype.
  """
  if q.shape != k.shape or q.shape != v.shape:
    raise ValueError(f"flash attention needs q, k, v of one shape, got {q.shape, k.shape, v.shape}")
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"model.attn_dropout must be in [0, 1), got {rate}")
  if seeds is None:
    rate = 0.0
  s = jnp.zeros((2,), jnp.int32) if seeds is None else lax.bitcast_convert_type(seeds, jnp.int32)
  scalars = jnp.stack([s[0], s[1], jnp.int32(offsets[0]), jnp.int32(offsets[1])])
  return _attention(q, k, v, scalars, float(scale), float(rate))


def sharded_attention(
  q: Array,
  k: Array,
  v: Array,
  seeds: Array | None,
  scale: float,
  rate: float,
  batch_axes: tuple[str, ...],
  head_axes: tuple[str, ...],
) -> Array:
  """`attention` under the active mesh, shard by shard (`jax.shard_map`): batch split over
  `batch_axes`, heads over `head_axes` (mesh axis names; empty: not split), each shard's
  dropout mask that of its slice of the global array. Without a mesh, `attention` itself."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not (batch_axes or head_axes):
    return attention(q, k, v, seeds, scale, rate)
  spec = jax.sharding.PartitionSpec(batch_axes or None, head_axes or None, None, None)

  def shard(q, k, v, seeds):
    b_off = lax.axis_index(batch_axes) * q.shape[0] if batch_axes else 0
    h_off = lax.axis_index(head_axes) * q.shape[1] if head_axes else 0
    return attention(q, k, v, seeds, scale, rate, (b_off, h_off))

  seeds_spec = jax.sharding.PartitionSpec()
  if seeds is None:
    return jax.shard_map(
      lambda q, k, v: shard(q, k, v, None), in_specs=(spec,) * 3, out_specs=spec, check_vma=False
    )(q, k, v)
  return jax.shard_map(
    shard, in_specs=(spec, spec, spec, seeds_spec), out_specs=spec, check_vma=False
  )(q, k, v, seeds)
