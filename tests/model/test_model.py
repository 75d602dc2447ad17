"""The generator at parity with the official code, its converter, and its sharding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax import sharding
from rar_jax.model import convert, layers, numerics, presets, rar, token_orders
from rar_jax.training import losses
from tests.helpers.official_reference import official_forward


@pytest.fixture(scope="module")
def golden(testdata):
  g = np.load(testdata / "rar_golden_tiny.npz")
  state = {k.removeprefix("param/"): g[k] for k in g.files if k.startswith("param/")}
  width, depth, heads, mlp = (int(v) for v in g["config"])
  return dict(g), state, dict(width=width, depth=depth, heads=heads, mlp_dim=mlp)


def _small_cfg(**overrides):
  kw = dict(width=32, depth=2, heads=4, mlp_dim=96, seq_len=16, codebook_size=64, num_classes=10)
  return presets.resolve({**kw, **overrides})


def _random_official(cfg, seed=0):
  """An official-format state dict with every tensor random (AdaLN-Zero layers included)."""
  rng = np.random.default_rng(seed)
  return {
    k: rng.normal(0, 0.3 if "adaLN" in k else 0.05, s).astype(np.float32)
    for k, s in convert.official_shapes(cfg).items()
  }


# Every value of every numerics switch (rar_jax/model/numerics.py) appears in one setting.
HAND_WRITTEN = {k: v[0] for k, v in numerics.CHOICES.items()}
SWITCHES = [
  HAND_WRITTEN,
  numerics.LIBRARY,
  {**numerics.LIBRARY, "attention_impl": "autodiff"},
  {**HAND_WRITTEN, "attention_impl": "pallas"},  # Pallas interpret mode on the CPU
]


@pytest.mark.parametrize(
  "scan_layers, switches",
  [(True, {}), (False, {})] + [(True, s) for s in SWITCHES],
  ids=["scan", "unrolled", "hand_written", "library", "autodiff_attention", "pallas_attention"],
)
def test_golden_logits_and_loss(golden, scan_layers, switches):
  g, state, sizes = golden
  cfg = presets.resolve({**sizes, "scan_layers": scan_layers, **switches})
  params = convert.load_official(state, cfg)
  logits = rar.forward(cfg, params, g["tokens"], g["labels"], g["orders"])
  assert logits.shape == (3, 257, 1024)
  np.testing.assert_allclose(np.asarray(logits), g["logits"], atol=1e-4, rtol=0)
  targets = token_orders.permute(jnp.asarray(g["tokens"]), jnp.asarray(g["orders"]))
  np.testing.assert_array_equal(targets, g["targets"])
  loss, accuracy = losses.next_token_loss(logits, targets)
  np.testing.assert_allclose(float(loss), float(g["loss"]), atol=1e-5)
  assert 0.0 <= float(accuracy) <= 1.0


def test_reference_matches_golden(golden):
  """The NumPy reference used below is itself checked against the official golden."""
  g, state, sizes = golden
  ref = official_forward(
    state, g["tokens"], g["labels"], g["orders"], depth=2, heads=sizes["heads"], codebook_size=1024
  )
  np.testing.assert_allclose(ref, g["logits"], atol=1e-4)


@pytest.mark.slow
def test_parity_at_other_sizes():
  """Head dim 12, mlp ratio 2.5, 16 tokens, 40 codes, 7 classes: sizes all come from config."""
  cfg = _small_cfg(width=36, heads=3, mlp_dim=90, codebook_size=40, num_classes=7)
  state = _random_official(cfg)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 40, (3, 16))
  labels = np.array([0, 6, 7])  # the last is the null class
  orders = np.stack([np.arange(16), rng.permutation(16), rng.permutation(16)])
  logits = rar.forward(cfg, convert.load_official(state, cfg), tokens, labels, orders)
  ref = official_forward(state, tokens, labels, orders, depth=2, heads=3, codebook_size=40)
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_converter_round_trip(scan_layers):
  cfg = _small_cfg(scan_layers=scan_layers)
  state = _random_official(cfg)
  back = convert.to_official(convert.from_official(state, cfg), cfg)
  assert set(back) == set(state)
  kept = cfg.num_positions
  for key, value in state.items():
    assert back[key].shape == value.shape, key
    if key in ("pos_embed", "target_aware_pos_embed", "timesteps_embeddings"):
      np.testing.assert_array_equal(back[key][:, :kept], value[:, :kept])
      assert not back[key][:, kept:].any(), f"{key}: unread rows must be zero-filled"
    else:
      np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_converter_errors_name_key_and_shapes():
  cfg = _small_cfg()
  state = _random_official(cfg)
  missing = {k: v for k, v in state.items() if k != "blocks.1.attn.qkv.bias"}
  with pytest.raises(ValueError, match=r"missing key 'blocks\.1\.attn\.qkv\.bias'.*\(96,\)"):
    convert.from_official(missing, cfg)
  extra = {**state, "blocks.2.norm1.weight": np.zeros(32)}
  with pytest.raises(ValueError, match=r"unexpected key 'blocks\.2\.norm1\.weight'.*\(32,\)"):
    convert.from_official(extra, cfg)
  wrong = {**state, "lm_head.weight": np.zeros((63, 32))}
  with pytest.raises(
    ValueError, match=r"'lm_head\.weight' has shape \(63, 32\), expected \(64, 32\)"
  ):
    convert.from_official(wrong, cfg)


@pytest.mark.parametrize(
  "variant,paper_millions", [("B", 261), ("L", 461), ("XL", 955), ("XXL", 1499)]
)
def test_parameter_counts_match_paper(variant, paper_millions):
  cfg = presets.resolve({"variant": variant})
  official = sum(int(np.prod(s)) for s in convert.official_shapes(cfg).values())
  assert abs(official / 1e6 - paper_millions) / paper_millions < 0.005
  # Ours holds exactly the official tensors minus the table rows no code path reads.
  ours = sum(int(x.size) for x in jax.tree.leaves(nn.unbox(rar.abstract_params(cfg))))
  unread_rows = 2 * (presets.OFFICIAL_POS_EXTRA_ROWS - 2) + presets.OFFICIAL_TIMESTEP_EXTRA_ROWS - 2
  assert ours == official - unread_rows * cfg.width


def test_explicit_sizes_override_variant_and_bad_configs():
  cfg = presets.resolve({"variant": "B", "depth": 2, "mlp_dim": 100})
  assert (cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim) == (768, 2, 16, 100)
  with pytest.raises(ValueError, match="model.variant='M'"):
    presets.resolve({"variant": "M"})
  with pytest.raises(ValueError, match="model.width=30 is not divisible by model.heads=4"):
    presets.resolve({"width": 30, "depth": 1, "heads": 4, "mlp_dim": 8})
  with pytest.raises(ValueError, match="model.depth must be set"):
    presets.resolve({"width": 32, "heads": 4, "mlp_dim": 8})
  with pytest.raises(ValueError, match="unknown model config key model.wdth"):
    presets.resolve({"variant": "B", "wdth": 3})
  with pytest.raises(ValueError, match="model.attention_blocks must be a positive integer"):
    presets.resolve({"variant": "B", "attention_blocks": 0})


@pytest.mark.slow
def test_causality_and_order_travel_together():
  """Outputs 0..k depend only on the first k + 1 entries of the order and their tokens."""
  cfg = _small_cfg(dropout=0.0)
  params = convert.from_official(_random_official(cfg), cfg)
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 64, (1, 16))
  a = rng.permutation(16)
  b = np.concatenate([a[:6], rng.permutation(a[6:])])
  la = rar.forward(cfg, params, tokens, np.array([3]), a[None])
  lb = rar.forward(cfg, params, tokens, np.array([3]), b[None])
  np.testing.assert_allclose(la[:, :6], lb[:, :6], atol=1e-5)
  assert not np.allclose(la[:, 7:], lb[:, 7:], atol=1e-3)
  tokens2 = tokens.copy()
  tokens2[0, a[10]] = (tokens[0, a[10]] + 1) % 64  # changes the input at step 10 only
  l2 = rar.forward(cfg, params, tokens2, np.array([3]), a[None])
  np.testing.assert_allclose(la[:, :11], l2[:, :11], atol=1e-5)
  assert not np.allclose(la[:, 11], l2[:, 11], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(
  "split_impl, decode",
  [("fused", "segmented"), ("chunked", "segmented"), ("fused", "pallas"), ("chunked", "pallas")],
)
def test_kv_cache_matches_full_forward(split_impl, decode):
  """Prefill [cls, class] then one token per call through the cache = the full forward; also
  through the flat cache and the Pallas decode kernel (interpret mode here)."""
  cfg = _small_cfg(split_impl=split_impl, decode_attention_impl=decode)
  params = convert.from_official(_random_official(cfg), cfg)
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 16)))
  labels = jnp.array([1, 10])
  orders = jnp.stack([jnp.arange(16), jnp.asarray(rng.permutation(16))])
  full = rar.forward(cfg, params, tokens, labels, orders)
  ids = rar.training_ids(cfg, tokens, labels, orders)
  cfg, params = rar.unscan(cfg, params)
  cache = rar.init_cache(cfg, 2)
  apply = jax.jit(rar.RAR(cfg).apply)
  cls_tok = rar.class_tokens(cfg, labels)
  out, cache = apply({"params": params}, ids[:, :2], cls_tok, orders, 0, cache)
  steps = [out[:, 1]]
  for q in range(2, cfg.seq_len + 1):
    out, cache = apply({"params": params}, ids[:, q : q + 1], cls_tok, orders, q, cache)
    steps.append(out[:, 0])
  np.testing.assert_allclose(np.stack(steps, 1), full[:, :-1], atol=1e-5)


@pytest.mark.slow
def test_dropout_only_in_training():
  cfg = _small_cfg()
  params = convert.from_official(_random_official(cfg), cfg)
  tokens, labels = jnp.zeros((2, 16), jnp.int32), jnp.array([0, 1])
  eval_a = rar.forward(cfg, params, tokens, labels)
  eval_b = rar.forward(cfg, params, tokens, labels)
  np.testing.assert_array_equal(eval_a, eval_b)
  key = jax.random.key(0)
  train_a = rar.forward(cfg, params, tokens, labels, dropout_rng=key)
  train_b = rar.forward(cfg, params, tokens, labels, dropout_rng=key)
  np.testing.assert_array_equal(train_a, train_b)
  assert not np.allclose(train_a, eval_a, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("split_impl", ["fused", "chunked"])
def test_sharded_init_and_logits_match_single_device(split_impl):
  cfg = _small_cfg(split_impl=split_impl)
  mesh = sharding.make_mesh((2, 2, 2))
  params = rar.init_params_sharded(cfg, jax.random.key(0), mesh)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    assert len(leaf.sharding.device_set) == 8
    if leaf.size >= 256:
      assert any(s is not None for s in leaf.sharding.spec), jax.tree_util.keystr(path)
  # Give the zero-initialised AdaLN-Zero layers values, keeping their shardings.
  params = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)
  single = jax.device_get(params)
  rng = np.random.default_rng(4)
  tokens = jnp.asarray(rng.integers(0, 64, (8, 16)))
  labels = jnp.asarray(rng.integers(0, 11, (8,)))
  orders = token_orders.sample_orders(jax.random.key(1), 8, 16, 0.5)
  expected = rar.forward(cfg, single, tokens, labels, orders)
  batch = sharding.batch_sharding(mesh)
  with sharding.activate(mesh):
    sharded = jax.jit(lambda p, t, y, o: rar.forward(cfg, p, t, y, o))(
      params, jax.device_put(tokens, batch), jax.device_put(labels, batch), orders
    )
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(expected), atol=1e-5)


@pytest.mark.slow
def test_scan_and_remat_variants_compute_the_same_gradients():
  base = _small_cfg(dropout=0.0, attn_dropout=0.0)
  state = _random_official(base)
  rng = np.random.default_rng(5)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 16)))
  labels = jnp.array([2, 10])
  orders = token_orders.sample_orders(jax.random.key(3), 2, 16, 1.0)
  results = []
  for scan_layers, remat in [(True, "none"), (False, "none"), (True, "full"), (False, "dots")]:
    cfg = presets.resolve(
      {**base.__dict__, "scan_layers": scan_layers, "remat_policy": remat, "variant": None}
    )
    params = convert.from_official(state, cfg)

    def loss(p, cfg=cfg):
      logits = rar.forward(cfg, p, tokens, labels, orders)
      return losses.next_token_loss(logits, token_orders.permute(tokens, orders))[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    results.append((float(value), convert.to_official(grads, cfg)))
  for value, grads in results[1:]:
    assert value == pytest.approx(results[0][0], abs=1e-6)
    for key in grads:
      np.testing.assert_allclose(grads[key], results[0][1][key], atol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(
  "switches", SWITCHES[1:], ids=["library", "autodiff_attention", "pallas_attention"]
)
def test_numeric_switches_compute_the_same_training_gradients(switches):
  """With dropout on (the same hash masks on every path), the library paths' gradients equal
  the hand-written backwards'."""
  base = _small_cfg(**HAND_WRITTEN)
  state = _random_official(base)
  rng = np.random.default_rng(6)
  tokens = jnp.asarray(rng.integers(0, 64, (2, 16)))
  labels = jnp.array([2, 10])
  orders = token_orders.sample_orders(jax.random.key(4), 2, 16, 1.0)
  results = []
  for cfg in (base, presets.resolve({**base.__dict__, **switches, "variant": None})):
    params = convert.from_official(state, cfg)

    def loss(p, cfg=cfg):
      logits = rar.forward(cfg, p, tokens, labels, orders, dropout_rng=jax.random.key(7))
      return losses.next_token_loss(logits, token_orders.permute(tokens, orders))[0]

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    results.append((float(value), convert.to_official(grads, cfg)))
  assert results[1][0] == pytest.approx(results[0][0], abs=1e-6)
  for key in results[0][1]:
    np.testing.assert_allclose(results[1][1][key], results[0][1][key], atol=2e-6, err_msg=key)


def test_numeric_switches_are_validated_and_resolved_per_backend():
  with pytest.raises(ValueError, match=r"model.layer_norm_impl must be one of \('auto', "):
    _small_cfg(layer_norm_impl="fast")
  cfg = _small_cfg()
  assert (
    numerics.for_platform(cfg, "tpu").attention_impl == numerics.DEFAULTS["tpu"]["attention_impl"]
  )
  assert numerics.impl(cfg, "linear_impl") == numerics.DEFAULTS["cpu"]["linear_impl"]
  assert numerics.for_platform(_small_cfg(linear_impl="flat"), "gpu").linear_impl == "flat"


def _hashed_bits(key, shape):
  from rar_jax.model import dropout

  return dropout.bits_from_seeds(dropout.seeds_from_key(key), shape)


def test_dropout_bits_are_uniform_independent_and_sharding_invariant():
  shape = (8, 4, 64, 66)
  a = np.asarray(_hashed_bits(jax.random.key(0), shape))
  b = np.asarray(_hashed_bits(jax.random.key(1), shape))
  np.testing.assert_array_equal(a, np.asarray(_hashed_bits(jax.random.key(0), shape)))
  drop_a, drop_b = a < 0.1 * 2**32, b < 0.1 * 2**32
  assert abs(drop_a.mean() - 0.1) < 0.003
  assert abs((drop_a & drop_b).mean() - 0.01) < 0.002  # independent across keys
  assert abs((drop_a[..., 1:] & drop_a[..., :-1]).mean() - 0.01) < 0.002  # and across neighbours
  assert abs((a >> 16).mean() / 2**16 - 0.5) < 0.005
  mesh = sharding.make_mesh((2, 2, 2))
  out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), "tensor"))
  sharded = jax.jit(lambda k: _hashed_bits(k, shape), out_shardings=out)(jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(sharded), a)


def test_linear_merges_kernel_axes_only_where_the_sharding_allows():
  """The flat [N, in] x [in, out] form is used unless merging would split a sharded axis; both
  forms give the same result."""
  with sharding.activate(sharding.make_mesh((4, 1, 2))):
    assert layers._mergeable(("heads", "head_dim"))  # tensor-sharded axis leads the group
    assert not layers._mergeable(("qkv", "heads", "head_dim"))
    assert not layers._mergeable(("modulation", "mod_embed"))
  with sharding.activate(sharding.make_mesh((4, 2, 1))):
    assert layers._mergeable(("qkv", "heads", "head_dim"))

  linear = layers.Linear((3, 2, 4), ("embed", "qkv", "heads", "head_dim"), jnp.float32)
  x = jax.random.normal(jax.random.key(0), (4, 5, 6))
  params = nn.unbox(linear.init(jax.random.key(1), x))
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  outputs = []
  for shape in ((8, 1, 1), (4, 1, 2)):
    with sharding.activate(sharding.make_mesh(shape)):
      outputs.append(np.asarray(jax.jit(linear.apply)(params, x)))
  np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    outputs[0],
    np.einsum("btd,dqhk->btqhk", x, params["params"]["kernel"]) + params["params"]["bias"],
    rtol=1e-5,
    atol=1e-5,
  )
