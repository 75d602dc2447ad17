"""The fused Pallas attention (Pallas interpret mode on the CPU) against the reference
attention: values, gradients, its dropout mask and rate, sharding, and its cost records."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax import sharding
from rar_jax.model import attention, dropout
from rar_jax.model.kernels import accounting
from rar_jax.model.kernels import flash_attention as fa


def _inputs(shape, dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  q, k, v, dout = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys[:4])
  return q, k, v, dout, dropout.seeds_from_key(keys[4])


def _causal(t):
  return jnp.tril(jnp.ones((t, t), bool))


def _value_and_grads(fn, q, k, v, dout):
  """fn(q, k, v) and the gradients of <fn(q, k, v), dout> with respect to q, k, v."""
  out, vjp = jax.vjp(fn, q, k, v)
  return out, vjp(dout)


def _masked_reference(q, k, v, keep, scale, rate):
  """Plain-JAX attention dropping the probabilities with a given keep-mask [B, H, T, T]."""
  logits = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=jnp.float32) * scale
  logits = jnp.where(_causal(q.shape[2]), logits, -jnp.inf)
  probs = jax.nn.softmax(logits, axis=-1)
  dropped = jnp.where(keep, probs / (1.0 - rate), 0.0).astype(v.dtype)
  return jnp.einsum("bhts,bhsk->bhtk", dropped, v)


@pytest.mark.parametrize(
  "shape, rate",
  [
    pytest.param((1, 2, 258, 80), 0.1, marks=pytest.mark.slow),
    ((2, 2, 20, 64), 0.0),
    ((1, 3, 20, 88), 0.3),
  ],
  ids=["T258_D80_dropout", "T20_D64", "T20_D88_dropout"],
)
def test_values_and_gradients_match_the_reference_attention(shape, rate):
  """The same function as `attention.attention` (causal mask, the same hash dropout mask), and
  the same gradients: the backward kernels regenerate the forward's mask."""
  q, k, v, dout, seeds = _inputs(shape)
  scale = shape[-1] ** -0.5
  mask = _causal(shape[2])
  ref, ref_grads = _value_and_grads(
    lambda q, k, v: attention.attention(q, k, v, mask, seeds, scale, rate, 1), q, k, v, dout
  )
  out, grads = jax.jit(
    lambda q, k, v, dout: _value_and_grads(
      lambda q, k, v: fa.attention(q, k, v, seeds, scale, rate), q, k, v, dout
    )
  )(q, k, v, dout)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
  for name, got, want in zip("qkv", grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=0, err_msg=f"d{name}")


def test_bfloat16_matches_the_reference_within_bf16_rounding():
  q, k, v, dout, seeds = _inputs((2, 2, 20, 64), jnp.bfloat16, seed=1)
  scale, rate, mask = 0.125, 0.1, _causal(20)
  ref, ref_grads = _value_and_grads(
    lambda q, k, v: attention.attention(q, k, v, mask, seeds, scale, rate, 1), q, k, v, dout
  )
  out, grads = jax.jit(
    lambda q, k, v, dout: _value_and_grads(
      lambda q, k, v: fa.attention(q, k, v, seeds, scale, rate), q, k, v, dout
    )
  )(q, k, v, dout)
  assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
  np.testing.assert_allclose(f32(out), f32(ref), atol=3e-2, rtol=0)
  for name, got, want in zip("qkv", grads, ref_grads, strict=True):
    scale_of = float(np.abs(f32(want)).max())
    np.testing.assert_allclose(f32(got), f32(want), atol=3e-2 * scale_of, rtol=0, err_msg=name)


def test_hash_bits_are_the_plain_dropout_bits():
  """`keep_bits` (int32 arithmetic, what the kernels compute) has the bits of
  `dropout.bits_from_seeds` over [B, H, T, T], so the masks are the reference path's."""
  seeds = dropout.seeds_from_key(jax.random.key(3))
  shape = (3, 4, 37, 37)
  want = dropout.bits_from_seeds(seeds, shape)
  s = jax.lax.bitcast_convert_type(seeds, jnp.int32)
  b, h, q, k = (jnp.arange(n, dtype=jnp.int32).reshape([-1 if i == a else 1 for i in range(4)])
                for a, n in enumerate(shape))  # fmt: skip
  got = fa.keep_bits(s[0], fa.batch_word(s[1], b), h, q, k, shape[2])
  np.testing.assert_array_equal(jax.lax.bitcast_convert_type(got, jnp.uint32), want)
  for rate in (0.1, 0.5):
    keep = fa.reference_mask(seeds, shape, rate)
    np.testing.assert_array_equal(keep, want >= np.uint32(round(rate * 2**32)))


def _kernel_mask(seeds, shape, rate):
  """The kernel's own keep-mask, read off its output: with q = k = 0 every causal probability
  of row t is 1 / (t + 1), and v = the identity returns them one key per column."""
  b, h, t, _ = shape
  q = k = jnp.zeros((b, h, t, t), jnp.float32)
  v = jnp.broadcast_to(jnp.eye(t, dtype=jnp.float32), (b, h, t, t))
  out = jax.jit(lambda q, k, v: fa.attention(q, k, v, seeds, 1.0, rate))(q, k, v)
  rows = jnp.arange(t, dtype=jnp.float32)[:, None] + 1.0
  return np.asarray(out * rows * (1.0 - rate)) > 0.5, np.asarray(out * rows * (1.0 - rate))


@pytest.mark.parametrize("rate", [0.1, 0.4])
def test_kernel_dropout_rate_and_mask(rate):
  """The in-kernel mask is the shared hash mask, and drops the causal entries at `rate`."""
  seeds = dropout.seeds_from_key(jax.random.key(11))
  shape = (4, 4, 64, 64)
  keep, scaled = _kernel_mask(seeds, shape, rate)
  causal = np.tril(np.ones((64, 64), bool))
  np.testing.assert_allclose(scaled[..., causal], keep[..., causal], atol=1e-5)  # 0 or 1 only
  assert not keep[..., ~causal].any()
  np.testing.assert_array_equal(
    keep[..., causal], np.asarray(fa.reference_mask(seeds, shape, rate))[..., causal]
  )
  n = keep[..., causal].size  # 33,280 causal entries
  dropped = 1.0 - keep[..., causal].mean()
  assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n), (dropped, rate)


def test_reference_mask_rate_is_right_and_masks_differ_by_seed():
  shape = (4, 8, 258, 258)
  a = np.asarray(fa.reference_mask(dropout.seeds_from_key(jax.random.key(0)), shape, 0.1))
  b = np.asarray(fa.reference_mask(dropout.seeds_from_key(jax.random.key(1)), shape, 0.1))
  n = a.size
  sigma = np.sqrt(0.09 / n)
  assert abs((1.0 - a.mean()) - 0.1) < 5 * sigma
  both = (~a & ~b).mean()  # independent seeds: P(both dropped) = 0.01
  assert abs(both - 0.01) < 5 * np.sqrt(0.01 * 0.99 / n)
  per_row = 1.0 - a.mean(axis=-1)  # every (sample, head, row) near the rate too
  assert abs(per_row.mean() - 0.1) < 5 * sigma and per_row.std() < 0.04


def test_gradients_match_a_reference_with_the_materialized_mask():
  """Forward and backward kernels use one mask: the gradients equal autodiff of plain attention
  dropping with `reference_mask` (a backward mask differing from the forward's would not)."""
  shape, rate = (2, 3, 130, 48), 0.2  # two query blocks, one skipped block pair
  q, k, v, dout, seeds = _inputs(shape, seed=4)
  keep = fa.reference_mask(seeds, shape, rate)
  scale = 48**-0.5
  ref, ref_grads = _value_and_grads(
    lambda q, k, v: _masked_reference(q, k, v, keep, scale, rate), q, k, v, dout
  )
  out, grads = jax.jit(
    lambda q, k, v, dout: _value_and_grads(
      lambda q, k, v: fa.attention(q, k, v, seeds, scale, rate), q, k, v, dout
    )
  )(q, k, v, dout)
  np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
  for name, got, want in zip("qkv", grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, atol=5e-5, rtol=0, err_msg=f"d{name}")


def test_sharded_call_computes_the_whole_arrays_result():
  """Under a (data, fsdp, tensor) = (2, 2, 2) mesh, batch and heads split: every shard's mask is
  its slice of the whole array's, so the result and gradients equal the unsharded call's."""
  shape, rate = (4, 4, 20, 64), 0.1
  q, k, v, dout, seeds = _inputs(shape, seed=5)
  mesh = sharding.make_mesh((2, 2, 2))

  def run(q, k, v, dout):
    fn = lambda q, k, v: fa.sharded_attention(  # noqa: E731
      q, k, v, seeds, 0.125, rate, ("data", "fsdp"), ("tensor",)
    )
    return _value_and_grads(fn, q, k, v, dout)

  want, want_grads = jax.jit(run)(q, k, v, dout)  # no mesh: one call on the whole arrays
  with jax.set_mesh(mesh):
    got, grads = jax.jit(run)(q, k, v, dout)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
  for g, w in zip(grads, want_grads, strict=True):  # reductions of other shapes: f32 rounding
    np.testing.assert_allclose(g, w, atol=5e-6, rtol=0)


def test_calls_record_their_block_costs():
  """One record per kernel call; FLOPs of the causal block pairs only (6 of 9 at T = 258), the
  head dim counted as the MXU pads it; HBM bytes of q, k, v, o (and the gradients) once each,
  as the TPU's tiles lay them out."""
  b, h, t, d = 2, 4, 258, 48
  x = jax.ShapeDtypeStruct((b, h, t, d), jnp.bfloat16)
  seeds = jax.ShapeDtypeStruct((2,), jnp.uint32)

  def loss(q, k, v, seeds):
    return jnp.sum(fa.attention(q, k, v, seeds, 0.1, 0.1).astype(jnp.float32))

  with accounting.collect() as calls:
    jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), x, x, x, seeds)
  rows = {r["name"]: r for r in accounting.summarize(calls)}
  assert sorted(rows) == ["flash_attention_bwd", "flash_attention_fwd"]
  block_pairs = 6 * b * h * 128 * 128 * 128 * 2  # FLOPs of one [128, 128, 128] matmul per pair
  assert rows["flash_attention_fwd"]["flops"] == 2 * block_pairs
  assert rows["flash_attention_bwd"]["flops"] == 5 * block_pairs  # logits, dP, dv, dk, dq
  by_key = b * h * 272 * 128 * 2  # bf16 [B, H, T, D]: [258, 48] in [16, 128] tiles
  by_query = b * h * 48 * 384 * 2  # bf16 [B, H, D, T] (transposed): [48, 258] in tiles
  assert fa.tiled_bytes((b, h, t, d), jnp.bfloat16) == by_key
  assert fa.tiled_bytes((b, h, d, t), jnp.bfloat16) == by_query
  assert fa.tiled_bytes((t, d), jnp.float32) == 264 * 128 * 4
  # every operand transposed, [B, H, D, T]
  assert rows["flash_attention_fwd"]["bytes"] == 4 * by_query + b * h * t * 4
  assert rows["flash_attention_bwd"]["bytes"] == 7 * by_query + b * h * t * 8
  assert all(r["calls"] == 1 for r in rows.values())


def test_bad_inputs_name_the_problem():
  q = jnp.zeros((1, 1, 8, 16))
  with pytest.raises(ValueError, match="q, k, v of one shape"):
    fa.attention(q, jnp.zeros((1, 1, 9, 16)), q, None, 1.0, 0.0)
  with pytest.raises(ValueError, match=r"model.attn_dropout must be in \[0, 1\), got 1.0"):
    fa.attention(q, q, q, None, 1.0, 1.0)
