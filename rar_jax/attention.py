"""Causal multi-head attention core with a hand-written backward pass.

The forward is the textbook one (fp32 logits and softmax, dropout on the probabilities); the
backward is what autodiff would compute, arranged for fewer passes over the [B, H, T, S]
arrays: the softmax's row term is sum(dout * out) over the head dim (as in FlashAttention)
instead of a reduction over [T, S], the dropout mask is recomputed from its seeds inside the
fused elementwise pass, and the key/value gradients are formed as [K, S] products so the large
[T, S] operand is read in its stored layout.

Shapes: B batch, H heads, T query positions, S key positions, K head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rar_jax import dropout

Array = jax.Array


def _probs(q: Array, k: Array, mask: Array, scale: float) -> Array:
  """Softmax attention weights [B, H, T, S] in fp32; masked entries are exactly 0."""
  logits = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits, axis=-1)


def _forward(q, k, v, mask, seeds, scale, rate):
  probs = _probs(q, k, mask, scale)
  out = jnp.einsum("bhts,bhsk->bhtk", dropout.drop(probs, seeds, rate).astype(v.dtype), v)
  return out, probs


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def attention(
  q: Array, k: Array, v: Array, mask: Array, seeds: Array | None, scale: float, rate: float
) -> Array:
  """softmax(q k^T * scale, masked) with dropout, times v.

  Args:
    q: [B, H, T, K] queries; k, v: [B, H, S, K] keys and values (all the compute dtype).
    mask: [T, S] bool, True where a query may attend to a key.
    seeds: uint32[2] dropout seeds (`dropout.seeds_from_key`), or None for no dropout.
    scale: logit scale (head_dim ** -0.5).
    rate: dropout probability on the attention weights.

  Returns:
    [B, H, T, K] in the dtype of v.
  """
  return _forward(q, k, v, mask, seeds, scale, rate)[0]


def _attention_fwd(q, k, v, mask, seeds, scale, rate):
  out, probs = _forward(q, k, v, mask, seeds, scale, rate)
  q_t = jnp.swapaxes(q, 2, 3)  # [B, H, K, T]: the key gradient's left operand, stored as read
  return out, (q_t, k, v, mask, seeds, out, probs)


def _attention_bwd(scale, rate, residuals, dout):
  q_t, k, v, mask, seeds, out, probs = residuals
  f32 = jnp.float32
  d_dropped = jnp.einsum("bhtk,bhsk->bhts", dout, v, preferred_element_type=f32)
  d_probs = dropout.drop(d_dropped, seeds, rate)
  row = jnp.sum(dout.astype(f32) * out.astype(f32), axis=-1, keepdims=True)  # [B, H, T, 1]
  d_logits = (probs * (d_probs - row) * scale).astype(q_t.dtype)  # masked entries: probs = 0
  dq = jnp.einsum("bhts,bhsk->bhtk", d_logits, k)
  dout_t = jnp.swapaxes(dout, 2, 3)  # [B, H, K, T]
  dk = jnp.swapaxes(jnp.einsum("bhkt,bhts->bhks", q_t, d_logits), 2, 3)
  dropped = dropout.drop(probs, seeds, rate).astype(v.dtype)
  dv = jnp.swapaxes(jnp.einsum("bhkt,bhts->bhks", dout_t, dropped), 2, 3)
  return dq.astype(q_t.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


attention.defvjp(_attention_fwd, _attention_bwd)
