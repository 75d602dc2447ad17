"""Speculative Jacobi decoding (SJD, Teng et al. 2025) over the plain sampler's KV cache: the
same distribution as `decoding.generate`, several tokens per model call.

W draft tokens follow the committed prefix. One model call feeds the window (the token before
it, then the first W - 1 drafts, each position with the target-aware embedding of the next
step) and gives, at every window position, the distribution p_i the plain sampler would draw
from (`decoding.step_logits` with that step's guidance scale). Each draft y_i carries the
distribution q_i it was drawn from (a fresh draft: one-hot). Scanning i = 0 .. W - 1, y_i is
accepted when u_i * q_i(y_i) < p_i(y_i); at the first rejection the token is drawn from
normalize(max(0, p_i - q_i)) and the scan stops. The positions after it become the next call's
drafts, drawn from their current p_i, which becomes their q_i. Every call commits at least one
token. With guidance both rows of a pair are fed the same drafts.

Batch rows accept different lengths. Each row keeps its own committed count n_b (its accepted
tokens are kept), while the window start s is shared: s = min(min_b n_b, L - W), because one
model call writes one [s + 1, s + 1 + W) slice of every layer's cache. Rows ahead of s see
their committed positions of the window as fixed (always accepted); at the end of the sequence
the window is pulled back to [L - W, L) the same way, so no position past L is ever fed.

Cache invariant: positions <= s hold committed tokens of every row (a draft fed there was either
accepted or lies at q >= s + 1, which this call feeds again); positions past the window are
masked by position, so stale entries are never read before being overwritten.

Buffers: tokens [B, L + 1] in position order minus one (index 0: the class-token slot, index
1 + i: step i, committed or draft), q [B, W, V] of the window's drafts with a fresh flag
[B, W] (one-hot q, not stored). Fresh drafts are uniform random codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


AUTO = "auto"
# Where a speculative window pays, per backend: (most images per chip, W), smallest batch first;
# larger batches sample with the plain sampler (W = 0). TPU: the compiler's cost of a W-position
# call of RAR-XL inside a sampling loop at 1 to 256 images per v5p chip, with the tokens per call
# of the digits model at the same batches, against the plain sampler's whole call: W = 8 is ~3x
# at 1 image per chip (the step reads the weights either way), and below 1x from 8 images per
# chip up (docs/measurements/sampling_speed.md). The 2-core CPU never gains (a call costs about
# W one-token calls there). GPU: unmeasured, plain.
DEFAULT_WINDOWS: dict[str, tuple[tuple[int, int], ...]] = {
  "tpu": ((1, 8),),
  "cpu": (),
  "gpu": (),
}


def default_window(platform: str, images_per_chip: int) -> int:
  """The window `sampling.speculative_window = "auto"` samples with on `platform` at this many
  images per chip (0: the plain sampler)."""
  for most, window in DEFAULT_WINDOWS.get(platform, ()):
    if images_per_chip <= most:
      return window
  return 0


def check_window(window: int, seq_len: int) -> None:
  """Raises a one-line ValueError unless 0 < window <= seq_len (the cache holds L + 1)."""
  if not 0 < window <= seq_len:
    raise ValueError(
      f"sampling.speculative_window={window} must be in [1, seq_len={seq_len}] "
      "(the window's positions must fit the L + 1 position KV cache)"
    )


def _accept(p: Array, q: Array, drafts: Array, fixed: Array, u: Array) -> Array:
  """[B] length of the accepted run: window positions before it are kept.

  p, q: [B, W, V] target and draft distributions; drafts: [B, W]; fixed: [B, W] positions
  already committed (always kept); u: [B, W] uniforms.
  """
  p_y = jnp.take_along_axis(p, drafts[..., None], axis=-1)[..., 0]
  q_y = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
  ok = fixed | (u * q_y < p_y)  # u < p / q with q_y > 0 (y was drawn from q)
  return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)


def _residual_logits(p: Array, q: Array) -> Array:
  """log normalize(max(0, p - q)) up to a constant: -inf where p <= q."""
  return jnp.log(jnp.maximum(p - q, 0.0))


def _advance(n: Array, s: Array, j: Array, window: int) -> Array:
  """[B] committed counts after a call: each row keeps the ones it had (its positions before n_b
  were fixed) and commits the window's accepted run plus the token at the first rejection.

  n: [B] committed counts; s: the window's first step; j: [B] accepted run lengths.
  """
  return jnp.maximum(n, s + jnp.minimum(j + 1, window))


def decode(
  feed: Any,
  logits_of: Callable[[Array, Array], Array],
  window: int,
  seq_len: int,
  codebook_size: int,
  key: Array,
) -> tuple[Array, Array]:
  """The speculative loop (traced inside `decoding.generate`'s jit).

  Args:
    feed: the batch's `decoding.Feeder` (cached model calls, class tokens, rows, empty cache).
    logits_of: fn(raw [R, W, V] model logits, steps [W]) -> [B, W, V] logits that the plain
      sampler would draw those steps from (`decoding.step_logits` with the sampling config).
    window: W in [1, L].
    seq_len: L.
    codebook_size: V.
    key: PRNG key; call c draws with fold_in(key, c).

  Returns:
    tokens [B, L] int32 in step order, and the number of model calls (a scalar int32,
    counting the one-position cls prefill).
  """
  w, v = window, codebook_size
  check_window(w, seq_len)
  b = feed.class_tok.shape[0] // feed.rows
  _, cache = feed.run(jnp.zeros((b * feed.rows, 1), jnp.int32), 0, feed.cache)  # q = 0: cls
  idx = jnp.arange(w)
  init_key, key = jax.random.split(key)
  tokens = jax.random.randint(init_key, (b, seq_len + 1), 0, v, jnp.int32)  # fresh drafts

  def call(state):
    tokens, q, fresh, n, s, cache, calls = state
    ku, kr, kd = jax.random.split(jax.random.fold_in(key, calls), 3)
    window = jax.lax.dynamic_slice_in_dim(tokens, s, w + 1, axis=1)  # [B, W + 1]
    pos = s + 1 + idx  # [W] fed positions; q = 1 is the class token
    fed = jnp.where(pos == 1, feed.class_tok[:, None], jnp.repeat(window[:, :w], feed.rows, 0))
    raw, cache = feed.run(fed, s + 1, cache)  # [R, W, V]
    logits = logits_of(raw, s + idx)  # [B, W, V]
    p = jax.nn.softmax(logits, axis=-1)
    drafts = window[:, 1:]  # [B, W]: steps s .. s + W - 1
    q = jnp.where(fresh[..., None], jax.nn.one_hot(drafts, v, dtype=p.dtype), q)
    fixed = (s + idx)[None, :] < n[:, None]
    j = _accept(p, q, drafts, fixed, jax.random.uniform(ku, drafts.shape))  # [B]
    resampled = jax.random.categorical(kr, _residual_logits(p, q)).astype(jnp.int32)
    redrafted = jax.random.categorical(kd, logits).astype(jnp.int32)
    after = idx[None, :] > j[:, None]  # [B, W]: the next call's drafts, q = p
    new = jnp.where(idx[None, :] < j[:, None], drafts, jnp.where(after, redrafted, resampled))
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, new, s + 1, axis=1)
    q = jnp.where(after[..., None], p, q)
    fresh = fresh & ~after
    n = _advance(n, s, j, w)
    s_next = jnp.minimum(jnp.min(n), seq_len - w)
    shift = s_next - s  # window positions that leave; as many fresh ones enter
    q = jax.lax.dynamic_slice_in_dim(jnp.concatenate([q, jnp.zeros_like(q)], 1), shift, w, 1)
    fresh = jax.lax.dynamic_slice_in_dim(
      jnp.concatenate([fresh, jnp.ones_like(fresh)], 1), shift, w, 1
    )
    return tokens, q, fresh, n, s_next, cache, calls + 1

  state = (
    tokens,
    jnp.zeros((b, w, v), jnp.float32),
    jnp.ones((b, w), bool),
    jnp.zeros((b,), jnp.int32),
    jnp.int32(0),
    cache,
    jnp.int32(1),
  )
  tokens, *_, calls = jax.lax.while_loop(lambda st: jnp.min(st[3]) < seq_len, call, state)
  return tokens[:, 1:], calls
