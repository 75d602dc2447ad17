"""Causal multi-head attention core with a hand-written backward pass.

The forward is the textbook one (fp32 logits and softmax, dropout on the probabilities); the
backward is what autodiff would compute, arranged for fewer passes over the [B, H, T, S]
arrays: the softmax's row term is sum(dout * out) over the head dim (as in FlashAttention)
instead of a reduction over [T, S], the dropout mask is recomputed from its seeds inside the
fused elementwise pass, and the key/value gradients are formed as [K, S] products so the large
[T, S] operand is read in its stored layout.

Causal self-attention can be split into query blocks: block [a, b) only computes its logits
against keys [0, b), which skips most of the masked upper triangle (about 3/8 of the [T, S]
work with four blocks). The dropout mask of a block is the same as in the unsplit computation.

Shapes: B batch, H heads, T query positions, S key positions, K head dim.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from rar_jax.model import dropout
from rar_jax.model.kernels import flash_attention

Array = jax.Array
_ROW_ALIGN = 8  # block boundaries on multiples of 8 rows (whole vector registers)


def query_blocks(t: int, blocks: int) -> list[tuple[int, int]]:
  """[a, b) ranges splitting t query rows into at most `blocks` contiguous blocks."""
  size = -(-t // max(blocks, 1))
  size = -(-size // _ROW_ALIGN) * _ROW_ALIGN
  return [(a, min(a + size, t)) for a in range(0, t, size)]


def _probs(q: Array, k: Array, mask: Array, scale: float) -> Array:
  """Softmax attention weights [B, H, T, S] in fp32; masked entries are exactly 0."""
  logits = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


def _ends(q: Array, k: Array, blocks: int) -> list[tuple[int, int, int]]:
  """(a, b, e): query rows [a, b) attend to keys [0, e). Unsplit: one block over all keys."""
  t, s = q.shape[2], k.shape[2]
  if blocks <= 1:
    return [(0, t, s)]
  if s != t:
    raise ValueError(f"query blocks need causal self-attention (T == S), got T={t}, S={s}")
  return [(a, b, b) for a, b in query_blocks(t, blocks)]


def _forward(q, k, v, mask, seeds, scale, rate, blocks):
  full = (*q.shape[:3], k.shape[2])  # [B, H, T, S]
  outs, probs = [], []
  for a, b, e in _ends(q, k, blocks):
    p = _probs(q[:, :, a:b], k[:, :, :e], mask[a:b, :e], scale)  # [B, H, b - a, e]
    dropped = dropout.drop(p, seeds, rate, full, (0, 0, a, 0)).astype(v.dtype)
    outs.append(jnp.einsum("bhts,bhsk->bhtk", dropped, v[:, :, :e]))
    probs.append(p)
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
  return out, tuple(probs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def attention(
  q: Array,
  k: Array,
  v: Array,
  mask: Array,
  seeds: Array | None,
  scale: float,
  rate: float,
  blocks: int = 1,
) -> Array:
  """softmax(q k^T * scale, masked) with dropout, times v.

  Args:
    q: [B, H, T, K] queries; k, v: [B, H, S, K] keys and values (all the compute dtype).
    mask: [T, S] bool, True where a query may attend to a key.
    seeds: uint32[2] dropout seeds (`dropout.seeds_from_key`), or None for no dropout.
    scale: logit scale (head_dim ** -0.5).
    rate: dropout probability on the attention weights.
    blocks: query blocks (see the module doc); more than 1 requires causal self-attention
      (S == T and mask[t, s] False for every s > t).

  Returns:
    [B, H, T, K] in the dtype of v.
  """
  return _forward(q, k, v, mask, seeds, scale, rate, blocks)[0]


def _attention_fwd(q, k, v, mask, seeds, scale, rate, blocks):
  out, probs = _forward(q, k, v, mask, seeds, scale, rate, blocks)
  q_t = jnp.swapaxes(q, 2, 3)  # [B, H, K, T]: the key gradient's left operand, stored as read
  return out, (q_t, k, v, seeds, out, probs)


def _block_grads(scale, rate, full, block, q_t, k, v, seeds, out, probs, dout):
  """dq [B, H, b - a, K] and the [B, H, K, e] key/value gradient terms of one query block."""
  a, b, e = block
  f32 = jnp.float32
  dout, out, k, v = dout[:, :, a:b], out[:, :, a:b], k[:, :, :e], v[:, :, :e]
  d_dropped = jnp.einsum("bhtk,bhsk->bhts", dout, v, preferred_element_type=f32)
  d_probs = dropout.drop(d_dropped, seeds, rate, full, (0, 0, a, 0))
  row = jnp.sum(dout.astype(f32) * out.astype(f32), axis=-1, keepdims=True)  # [B, H, T, 1]
  d_logits = (probs * (d_probs - row) * scale).astype(q_t.dtype)  # masked entries: probs = 0
  dq = jnp.einsum("bhts,bhsk->bhtk", d_logits, k)
  dk_t = jnp.einsum("bhkt,bhts->bhks", q_t[..., a:b], d_logits)
  dropped = dropout.drop(probs, seeds, rate, full, (0, 0, a, 0)).astype(v.dtype)
  dv_t = jnp.einsum("bhkt,bhts->bhks", jnp.swapaxes(dout, 2, 3), dropped)
  return dq, dk_t, dv_t


def _attention_bwd(scale, rate, blocks, residuals, dout):
  q_t, k, v, seeds, out, probs = residuals
  s = k.shape[2]
  full = (*dout.shape[:3], s)
  f32 = jnp.float32
  dq, dk_t, dv_t = [], jnp.zeros((*q_t.shape[:3], s), f32), jnp.zeros((*q_t.shape[:3], s), f32)
  for block, p in zip(_ends(dout, k, blocks), probs, strict=True):
    dq_i, dk_i, dv_i = _block_grads(scale, rate, full, block, q_t, k, v, seeds, out, p, dout)
    pad = ((0, 0), (0, 0), (0, 0), (0, s - block[2]))
    dq.append(dq_i)
    dk_t = dk_t + jnp.pad(dk_i.astype(f32), pad)
    dv_t = dv_t + jnp.pad(dv_i.astype(f32), pad)
  dq = dq[0] if len(dq) == 1 else jnp.concatenate(dq, axis=2)
  dk, dv = jnp.swapaxes(dk_t, 2, 3), jnp.swapaxes(dv_t, 2, 3)
  return dq.astype(q_t.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


attention.defvjp(_attention_fwd, _attention_bwd)


def mesh_axes() -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(batch, head) mesh axes of the activations under the active logical rules: how a Pallas
  kernel's `jax.shard_map` splits its rows and heads."""
  return tuple(
    () if a is None else (a,) if isinstance(a, str) else tuple(a)
    for a in nn.logical_to_mesh_axes(("batch", "act_heads"))
  )


def attend(
  impl: str,
  q: Array,
  k: Array,
  v: Array,
  mask: Array,
  seeds: Array | None,
  scale: float,
  rate: float,
  blocks: int = 1,
  causal: bool = False,
) -> Array:
  """`attention` by implementation (model.attention_impl, `rar_jax.model.numerics`): "custom"
  the hand-written backward; "autodiff" the same forward under plain autodiff; "xla"
  `jax.nn.dot_product_attention` when no dropout applies (else as "autodiff"); "pallas" the
  fused kernels (`kernels.flash_attention`) for causal self-attention (else as "custom");
  "cudnn" `jax.nn.dot_product_attention(implementation="cudnn")` when no dropout applies (else
  as "custom"). `causal`: the mask is the causal one of self-attention (T == S, mask[t, s] =
  s <= t); only then may "pallas" run. Shapes as `attention`."""
  if impl == "pallas" and causal:
    return flash_attention.sharded_attention(q, k, v, seeds, scale, rate, *mesh_axes())
  no_dropout = seeds is None or rate == 0.0
  if (impl == "xla" or impl == "cudnn") and no_dropout:
    out = jax.nn.dot_product_attention(
      *(jnp.swapaxes(a, 1, 2) for a in (q, k, v)),  # [B, T, H, K]
      mask=mask[None, None],  # [1, 1, T, S]
      scale=scale,
      implementation="cudnn" if impl == "cudnn" else None,
    )
    return jnp.swapaxes(out, 1, 2).astype(v.dtype)
  if impl in ("custom", "pallas", "cudnn"):
    return attention(q, k, v, mask, seeds, scale, rate, blocks)
  return _forward(q, k, v, mask, seeds, scale, rate, blocks)[0]
