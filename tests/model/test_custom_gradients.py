"""Hand-written backward passes (attention, GELU + dropout, LayerNorm) equal autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax.model import attention, dropout


def _autodiff_attention(q, k, v, mask, seeds, scale, rate):
  return attention._forward(q, k, v, mask, seeds, scale, rate, 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("queries,keys", [(10, 10), (3, 12)])
def test_gradients_match_autodiff(rate, queries, keys):
  b, h, d = 2, 3, 8
  kq, kk, kv, kw = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(kq, (b, h, queries, d))
  k, v = jax.random.normal(kk, (b, h, keys, d)), jax.random.normal(kv, (b, h, keys, d))
  weights = jax.random.normal(kw, (b, h, queries, d))
  q_pos = keys - queries + jnp.arange(queries)  # the last `queries` positions, as with a cache
  mask = jnp.arange(keys)[None, :] <= q_pos[:, None]
  seeds = dropout.seeds_from_key(jax.random.key(1)) if rate else None

  def loss(fn, q, k, v):
    return jnp.sum(weights * fn(q, k, v, mask, seeds, d**-0.5, rate))

  ours = jax.value_and_grad(lambda *a: loss(attention.attention, *a), (0, 1, 2))(q, k, v)
  ref = jax.value_and_grad(lambda *a: loss(_autodiff_attention, *a), (0, 1, 2))(q, k, v)
  assert float(ours[0]) == pytest.approx(float(ref[0]), abs=1e-5)  # the same forward
  for name, a, r in zip("qkv", ours[1], ref[1], strict=True):
    np.testing.assert_allclose(a, r, atol=2e-6, rtol=1e-5, err_msg=f"d{name}")


@pytest.mark.slow
@pytest.mark.parametrize("blocks", [2, 4])
def test_query_blocks_give_the_unsplit_result(blocks):
  """Blocked causal attention: same output, gradients and dropout mask as the full square."""
  b, h, t, d = 2, 3, 37, 8
  kq, kk, kv, kw = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (b, h, t, d)) for key in (kq, kk, kv))
  weights = jax.random.normal(kw, (b, h, t, d))
  mask = jnp.tril(jnp.ones((t, t), bool))
  seeds = dropout.seeds_from_key(jax.random.key(1))
  assert attention.query_blocks(t, blocks)[-1][1] == t
  with pytest.raises(ValueError, match="T == S"):
    attention.attention(q[:, :, :5], k, v, mask[:5], seeds, d**-0.5, 0.3, blocks)

  def loss(n, q, k, v):
    return jnp.sum(weights * attention.attention(q, k, v, mask, seeds, d**-0.5, 0.3, n))

  blocked = jax.value_and_grad(lambda *a: loss(blocks, *a), (0, 1, 2))(q, k, v)
  full = jax.value_and_grad(lambda *a: loss(1, *a), (0, 1, 2))(q, k, v)
  assert float(blocked[0]) == pytest.approx(float(full[0]), abs=1e-4)
  for name, a, r in zip("qkv", blocked[1], full[1], strict=True):
    np.testing.assert_allclose(a, r, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")


def test_dropout_drops_the_stated_fraction_and_rescales():
  x = jnp.ones((4, 64, 256))
  y = np.asarray(dropout.drop(x, dropout.seeds_from_key(jax.random.key(0)), 0.25))
  assert abs((y == 0).mean() - 0.25) < 0.01
  np.testing.assert_allclose(y[y != 0], 1 / 0.75)
  assert dropout.drop(x, None, 0.25) is x


@pytest.mark.parametrize("rate", [0.0, 0.2])
def test_gelu_then_drop_gradient_matches_autodiff(rate):
  h = 3.0 * jax.random.normal(jax.random.key(0), (4, 50, 64))
  weights = jax.random.normal(jax.random.key(1), h.shape)
  seeds = dropout.seeds_from_key(jax.random.key(2)) if rate else None

  def ours(h):
    return jnp.sum(weights * dropout.gelu_then_drop(h, seeds, rate))

  def ref(h):
    return jnp.sum(weights * dropout.drop(jax.nn.gelu(h, approximate=False), seeds, rate))

  assert float(ours(h)) == pytest.approx(float(ref(h)), abs=1e-5)
  np.testing.assert_allclose(jax.grad(ours)(h), jax.grad(ref)(h), atol=2e-6)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_flax_and_its_gradients(affine):
  import flax.linen as nn

  from rar_jax.model import normalization

  x = 2.0 * jax.random.normal(jax.random.key(0), (4, 30, 64)) + 1.0
  gamma = jax.random.normal(jax.random.key(1), (64,)) if affine else None
  beta = jax.random.normal(jax.random.key(2), (64,)) if affine else None
  weights = jax.random.normal(jax.random.key(3), x.shape)
  flax_ln = nn.LayerNorm(1e-6, use_bias=affine, use_scale=affine, use_fast_variance=False)
  variables = {"params": {"scale": gamma, "bias": beta}} if affine else {}

  def ours(x, gamma, beta):
    return jnp.sum(weights * normalization.layer_norm(x, gamma, beta, 1e-6))

  def ref(x, gamma, beta):
    params = {"params": {"scale": gamma, "bias": beta}} if affine else {}
    return jnp.sum(weights * flax_ln.apply(params, x))

  np.testing.assert_array_equal(
    normalization.layer_norm(x, gamma, beta, 1e-6), flax_ln.apply(variables, x)
  )
  argnums = (0, 1, 2) if affine else (0,)
  got = jax.grad(ours, argnums)(x, gamma, beta)
  want = jax.grad(ref, argnums)(x, gamma, beta)
  for name, a, r in zip(("x", "gamma", "beta"), got, want, strict=False):
    np.testing.assert_allclose(a, r, atol=2e-5, rtol=1e-5, err_msg=f"d{name}")
