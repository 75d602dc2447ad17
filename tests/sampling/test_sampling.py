"""The jitted sampler: cached loop = full forward, guidance, seeds across meshes, compiles."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax import sharding
from rar_jax.model import presets, rar, token_orders
from rar_jax.sampling import decoding

CFG = presets.resolve(
  dict(width=32, depth=2, heads=4, mlp_dim=64, seq_len=16, codebook_size=32, num_classes=10)
)
L, V = CFG.seq_len, CFG.codebook_size
GUIDED = decoding.SamplingConfig(guidance_scale=3.0, guidance_power=1.5, temperature=1.3)
_init = jax.jit(rar.init_params, static_argnums=0)
_forward = jax.jit(rar.forward, static_argnums=0)


def _params(seed: int = 0):
  """init_params with every zero-initialised leaf (AdaLN-Zero, biases, cls) made random."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: x if x.any() else jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype),
    _init(CFG, jax.random.key(seed)),
  )


@pytest.fixture(scope="module")
def params():
  return _params()


@pytest.fixture(scope="module")
def guided_sampler():
  return decoding.make_sampler(CFG, GUIDED)


def _orders(b: int, seed: int = 0):
  """[B, L] orders, each random with probability 0.5, else raster."""
  return token_orders.sample_orders(jax.random.key(seed), b, L, 0.5)


@pytest.mark.slow
def test_score_through_cache_matches_full_forward(params):
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, V, (4, L)))
  labels = jnp.array([0, 3, 9, 5])
  orders = jnp.stack([jnp.arange(L), *(jnp.asarray(rng.permutation(L)) for _ in range(3))])
  plain = decoding.SamplingConfig()
  full = _forward(CFG, params, tokens, labels, orders)[:, :L]
  np.testing.assert_allclose(
    decoding.score(CFG, params, tokens, labels, plain, orders), full, atol=1e-5
  )
  # Guided: both halves teacher-forced with the same tokens, s_t per step, temperature after.
  null = _forward(CFG, params, tokens, jnp.full_like(labels, CFG.null_class), orders)[:, :L]
  s = decoding.guidance_schedule(GUIDED, jnp.arange(L), L)[None, :, None]
  expected = (null + (full - null) * s) / GUIDED.temperature
  got = decoding.score(CFG, params, tokens, labels, GUIDED, orders)
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_guidance_scale_one_is_conditional(params):
  rng = np.random.default_rng(1)
  cond, uncond = (jnp.asarray(rng.normal(size=(3, V)), jnp.float32) for _ in range(2))
  np.testing.assert_array_equal(decoding.guided_logits(cond, uncond, 1.0), cond)
  one = decoding.SamplingConfig(guidance_scale=1.0, guidance_power=2.0)
  interleaved = jnp.stack([cond, uncond], axis=1).reshape(6, V)
  for t in (0, 7, L - 1):
    np.testing.assert_array_equal(decoding.step_logits(one, interleaved, t, L), cond)
  labels, key = jnp.arange(8) % 10, jax.random.key(3)
  off = decoding.generate(CFG, params, labels, key, decoding.SamplingConfig())
  on = decoding.generate(CFG, params, labels, key, one)
  np.testing.assert_array_equal(on, off)


@pytest.mark.slow
def test_same_seed_same_tokens_on_every_mesh(params, guided_sampler):
  assert jax.config.jax_threefry_partitionable
  sampler = guided_sampler
  labels, key, orders = jnp.arange(8) % 10, jax.random.key(7), _orders(8)
  expected = np.asarray(sampler(params, labels, key, orders))
  assert expected.dtype == np.int32 and expected.shape == (8, L)
  assert ((expected >= 0) & (expected < V)).all()
  np.testing.assert_array_equal(sampler(params, labels, key, orders), expected)
  assert not np.array_equal(sampler(params, labels, jax.random.key(8), orders), expected)
  for shape in ((8, 1, 1), (2, 2, 2)):
    mesh = sharding.make_mesh(shape)
    given = params
    if shape == (2, 2, 2):  # parameters FSDP/tensor-sharded as in training
      given = jax.device_put(params, rar.param_shardings(CFG, mesh))
    tokens = decoding.sample_on_mesh(sampler, mesh, given, labels, key, orders)
    assert len(tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(tokens, expected, err_msg=str(shape))
  assert sampler._cache_size() == 3  # one compile per mesh


def test_one_compile_per_batch_shape(guided_sampler):
  """New params, keys, classes and orders of the same shapes reuse the compiled sampler."""
  a = guided_sampler(_params(1), jnp.arange(8), jax.random.key(0), _orders(8, 1))
  compiles = guided_sampler._cache_size()
  assert compiles <= 3  # single device, plus the two meshes when that test ran first
  b = guided_sampler(_params(2), jnp.arange(8)[::-1], jax.random.key(1), _orders(8, 2))
  assert guided_sampler._cache_size() == compiles
  assert not np.array_equal(a, b)


def test_top_k_one_is_greedy_on_guided_logits(params):
  labels, orders = jnp.array([1, 2, 3, 4]), _orders(4, 3)
  greedy = decoding.SamplingConfig(guidance_scale=3.0, guidance_power=1.5, top_k=1)
  tokens = decoding.generate(CFG, params, labels, jax.random.key(0), greedy, orders)
  logits = decoding.score(CFG, params, tokens, labels, GUIDED, orders)  # no top-k
  step_tokens = token_orders.permute(tokens, orders)
  np.testing.assert_array_equal(jnp.argmax(logits, axis=-1), step_tokens)


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
  kept = lambda cfg: np.isfinite(decoding.step_logits(cfg, logits, 0, L))[0].tolist()
  assert kept(decoding.SamplingConfig(top_k=2)) == [False, True, False, True]
  assert kept(decoding.SamplingConfig(top_p=0.75)) == [False, True, False, True]
  assert kept(decoding.SamplingConfig(top_p=0.85)) == [False, True, True, True]
  assert kept(decoding.SamplingConfig(top_p=0.01)) == [False, True, False, False]
  with pytest.raises(ValueError, match="sampling.top_p"):
    decoding.SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="sampling.temperature"):
    decoding.SamplingConfig(temperature=0.0)


def test_power_cosine_schedule():
  t = jnp.arange(256)
  s = decoding.guidance_schedule(decoding.SamplingConfig(16.0, 2.75), t, 256)
  assert float(s[0]) == 1.0
  assert (jnp.diff(s) >= 0).all() and 15.9 < float(s[-1]) < 16.0
  assert float(decoding.guidance_schedule(decoding.SamplingConfig(16.0, 2.75), 256, 256)) == 16.0
  constant = decoding.guidance_schedule(decoding.SamplingConfig(4.0, 0.0), t, 256)
  np.testing.assert_allclose(constant, 4.0, rtol=1e-6)  # 0^0 = 1, even at t = 0
  mid = decoding.guidance_schedule(decoding.SamplingConfig(5.0, 1.0), 128, 256)
  np.testing.assert_allclose(mid, 3.0, rtol=1e-6)  # cos(pi / 2) = 0 -> halfway


def test_loop_keeps_the_cache_in_place_and_on_device(params, guided_sampler):
  """The compiled decode loop: no host transfer, cache updates in place, no cache copies."""
  b = 4
  hlo = guided_sampler.lower(params, jnp.arange(b), jax.random.key(0)).compile().as_text()
  assert " while(" in hlo  # the decode loop (a lax.scan) stays on the device
  for host_op in ("infeed", "outfeed", " send(", " recv(", "callback"):
    assert host_op not in hlo, host_op
  rows = 2 * b  # conditional and null-class rows
  cache = f"f32[{rows},{CFG.heads},{L + 1},{CFG.head_dim}]"
  lines = hlo.splitlines()
  assert any(cache in line and "dynamic-update-slice" in line for line in lines)
  copies = [line for line in lines if f"= {cache}" in line and " copy(" in line]
  assert not copies, copies


@pytest.mark.parametrize("window", [0, 4], ids=["plain", "speculative_W4"])
def test_decode_kernel_samples_the_same_tokens(params, window):
  """decode_attention_impl "pallas" samples through the flat [B, S, H K] cache and the Pallas decode
  kernel (interpret mode here), one segment over the whole cache: the same tokens as the
  reference attention for the same key, guided and not, and the same teacher-forced logits."""
  kernel_cfg = dataclasses.replace(CFG, decode_attention_impl="pallas")
  reference_cfg = dataclasses.replace(CFG, decode_attention_impl="segmented")
  assert decoding.decode_segments(kernel_cfg) == [L - 1]
  assert rar.init_cache(kernel_cfg, 2)[0]["k"].shape == (2, 32, CFG.width)  # L + 1 -> 32
  classes = jnp.arange(3)
  for settings in (
    dataclasses.replace(GUIDED, speculative_window=window),
    decoding.SamplingConfig(),
  ):
    key = jax.random.key(7)
    want = decoding.generate(reference_cfg, params, classes, key, settings)
    got = decoding.generate(kernel_cfg, params, classes, key, settings)
    np.testing.assert_array_equal(got, want)
  tokens = decoding.generate(reference_cfg, params, classes, jax.random.key(1), GUIDED)
  np.testing.assert_allclose(
    decoding.score(kernel_cfg, params, tokens, classes, GUIDED),
    decoding.score(reference_cfg, params, tokens, classes, GUIDED),
    atol=2e-5,
  )
