"""Speculative Jacobi decoding with the real model: the sequence distribution (goodness of fit
against teacher-forced probabilities), greedy equality with the plain sampler, in-place cache,
bad windows. The test with the power to catch a biased rule, and the planted bugs it catches,
is test_speculative_exactness.py (a model whose law is enumerable)."""

import dataclasses
import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rar_jax.model import presets, rar
from rar_jax.sampling import decoding, export, speculative

# 4 tokens of a 3-code book, 2 classes: 81 sequences per class.
TINY = presets.resolve(
  dict(width=16, depth=2, heads=2, mlp_dim=32, seq_len=4, codebook_size=3, num_classes=2)
)
SEQS = np.array(list(itertools.product(range(3), repeat=4)), np.int32)  # [81, 4]
PER_CLASS = 2000
ORDER = np.array([2, 0, 3, 1], np.int32)


def _settings(window: int | str) -> decoding.SamplingConfig:
  return decoding.SamplingConfig(
    guidance_scale=2.5, guidance_power=1.0, temperature=0.8, top_k=2, speculative_window=window
  )


@pytest.fixture(scope="module")
def tiny_params():
  """Every leaf N(0, 0.2): each step depends on the tokens before it, 16 sequences likely."""
  rng = np.random.default_rng(0)
  params = jax.jit(rar.init_params, static_argnums=0)(TINY, jax.random.key(0))
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype), params)


def _exact(params, settings, orders) -> np.ndarray:
  """[2, 81] probability of each sequence per class, by teacher forcing (`decoding.score`)."""
  probs = []
  for c in range(2):
    labels = jnp.full((len(SEQS),), c)
    order_rows = None if orders is None else jnp.broadcast_to(orders, SEQS.shape)
    logits = decoding.score(TINY, params, jnp.asarray(SEQS), labels, settings, order_rows)
    logp = jax.nn.log_softmax(logits, axis=-1)  # [81, L, V] per step
    steps = SEQS if orders is None else SEQS[:, orders]  # the token of each step
    probs.append(
      np.exp(np.take_along_axis(np.asarray(logp, np.float64), steps[..., None], -1).sum((1, 2)))
    )
  return np.stack(probs)


def _p_value(params, settings, orders, seed: int = 0) -> float:
  """Chi-square p-value of PER_CLASS samples per class against the exact probabilities."""
  labels = jnp.repeat(jnp.arange(2), PER_CLASS)
  order_rows = None if orders is None else jnp.broadcast_to(orders, (len(labels), 4))
  tokens = np.asarray(
    decoding.generate(TINY, params, labels, jax.random.key(seed), settings, order_rows)
  )
  codes = tokens @ (3 ** np.arange(3, -1, -1))  # row of SEQS
  exact = _exact(params, settings, orders)
  np.testing.assert_allclose(exact.sum(1), 1.0, rtol=1e-4)
  observed, expected = [], []
  for c in range(2):
    counts = np.bincount(codes[c * PER_CLASS : (c + 1) * PER_CLASS], minlength=len(SEQS))
    big = exact[c] * PER_CLASS >= 5  # pool the rare sequences into one cell
    observed += [*counts[big], counts[~big].sum()]  # float64 from here
    expected += [*exact[c][big] * PER_CLASS, exact[c][~big].sum() * PER_CLASS]
  observed, expected = np.array(observed), np.array(expected)
  assert (observed[expected == 0] == 0).all()  # top-k: filtered sequences never appear
  keep = expected > 0
  expected = expected[keep] * observed.sum() / expected[keep].sum()  # float32 rounding
  return float(stats.chisquare(observed[keep], expected).pvalue)


@pytest.mark.slow
@pytest.mark.parametrize("window, orders", [(0, None), (2, None), (4, ORDER)])
def test_samples_follow_the_exact_distribution(tiny_params, window, orders):
  assert _p_value(tiny_params, _settings(window), orders) > 1e-3


# A larger model for the loop's structure: 16 tokens of 32 codes.
CFG = presets.resolve(
  dict(width=32, depth=2, heads=4, mlp_dim=64, seq_len=16, codebook_size=32, num_classes=10)
)
GUIDED = decoding.SamplingConfig(guidance_scale=3.0, guidance_power=1.5, temperature=1.3)


@pytest.fixture(scope="module")
def params16():
  rng = np.random.default_rng(1)
  params = jax.jit(rar.init_params, static_argnums=0)(CFG, jax.random.key(1))
  return jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.2, x.shape), x.dtype), params)


@pytest.mark.slow
def test_window_zero_is_the_plain_sampler(params16):
  classes, key = jnp.arange(3), jax.random.key(3)
  tokens, calls = decoding.generate_counted(CFG, params16, classes, key, GUIDED)
  plain = decoding.generate(CFG, params16, classes, key, GUIDED)
  np.testing.assert_array_equal(tokens, plain)
  assert int(calls) == CFG.seq_len


@pytest.mark.slow
@pytest.mark.parametrize("window", [1, 5, 16])
def test_greedy_speculative_equals_greedy_plain(params16, window):
  """top_k = 1 makes every step deterministic: any correct window reproduces the plain
  sampler's tokens exactly (any order, guidance, per-row acceptance), in fewer calls."""
  greedy = dataclasses.replace(GUIDED, top_k=1)
  orders = jnp.stack([jnp.arange(16), jnp.arange(16)[::-1], jnp.roll(jnp.arange(16), 5)])
  classes, key = jnp.array([0, 7, 3]), jax.random.key(4)
  plain = decoding.generate(CFG, params16, classes, key, greedy, orders)
  fast = dataclasses.replace(greedy, speculative_window=window)
  tokens, calls = decoding.generate_counted(CFG, params16, classes, key, fast, orders)
  np.testing.assert_array_equal(tokens, plain)
  assert int(calls) <= CFG.seq_len + 1
  if window > 1:
    assert int(calls) < CFG.seq_len


@pytest.mark.slow
def test_loop_keeps_the_cache_in_place_and_on_device(params16):
  """One compiled while loop, no host transfer, the window written in place, no cache copies."""
  b, w = 4, 5
  sampler = decoding.make_sampler(CFG, dataclasses.replace(GUIDED, speculative_window=w))
  hlo = sampler.lower(params16, jnp.arange(b), jax.random.key(0)).compile().as_text()
  assert " while(" in hlo
  for host_op in ("infeed", "outfeed", " send(", " recv(", "callback"):
    assert host_op not in hlo, host_op
  cache = f"f32[{2 * b},{CFG.heads},{CFG.seq_len + 1},{CFG.head_dim}]"
  lines = hlo.splitlines()
  assert any(cache in line and "dynamic-update-slice" in line for line in lines)
  copies = [line for line in lines if f"= {cache}" in line and " copy(" in line]
  assert not copies, copies


def test_bad_windows_are_named():
  with pytest.raises(ValueError, match="speculative_window must be >= 0.*-1"):
    decoding.SamplingConfig(speculative_window=-1)
  too_long = dataclasses.replace(GUIDED, speculative_window=17)
  with pytest.raises(ValueError, match=r"speculative_window=17 must be in \[1, seq_len=16\]"):
    decoding.make_sampler(CFG, too_long)


@pytest.mark.slow
def test_bench_compares_windows_on_an_export(params16, tmp_path):
  """`bench sample --export --speculative_window`: one JSON line per window, W = 0 first; a
  window longer than the sequence is named before anything compiles."""
  from configs import digits

  config = digits.get_config()
  export.write(str(tmp_path / "exp"), jax.device_get(params16), CFG, config)
  base = [sys.executable, "-m", "rar_jax.tools.bench", "sample", f"--export={tmp_path / 'exp'}"]
  base += ["--batch=2", "--steps=1", "--warmup=0"]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  out = subprocess.run(
    [*base, "--speculative_window=4"], capture_output=True, text=True, check=True, env=env
  )
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [r["window"] for r in rows] == [0, 4]
  assert rows[0]["model_calls_per_image"] == CFG.seq_len and rows[0]["tokens_per_call"] == 1
  assert 1 <= rows[1]["tokens_per_call"] <= 4 and rows[1]["images_per_s"] > 0
  bad = subprocess.run([*base, "--speculative_window=17"], capture_output=True, text=True, env=env)
  assert bad.returncode != 0
  assert "speculative_window=17 must be in [1, seq_len=16]" in bad.stderr


def test_auto_window_per_backend_and_images_per_chip(tiny_params):
  """ "auto" resolves per platform and images per chip (`speculative.DEFAULT_WINDOWS`): on this
  CPU it is the plain sampler, token for token; for a TPU topology (compile only) the window of
  the table's row for the batch per chip, the plain sampler past the table."""
  from rar_jax import sharding  # noqa: PLC0415
  from rar_jax.tools import tpu_compiler  # noqa: PLC0415

  auto = _settings("auto")
  assert auto.resolve_window(8, 4).speculative_window == 0  # CPU, no mesh
  classes = jnp.arange(4) % 2
  np.testing.assert_array_equal(
    decoding.generate(TINY, tiny_params, classes, jax.random.key(5), auto),
    decoding.generate(TINY, tiny_params, classes, jax.random.key(5), _settings(0)),
  )
  assert decoding.SamplingConfig(speculative_window="8").speculative_window == 8  # a flag's text
  with pytest.raises(ValueError, match="must be an int >= 0 or 'auto', got 'fast'"):
    decoding.SamplingConfig(speculative_window="fast")
  assert speculative.default_window("cpu", 1) == 0 and speculative.default_window("gpu", 1) == 0
  if tpu_compiler.unavailable_reason() is not None:
    pytest.skip(f"TPU compiler unavailable: {tpu_compiler.unavailable_reason()}")
  chip, dims = tpu_compiler.parse_slice("v5p:2x2x1")
  mesh = sharding.make_mesh((-1, 1, 1), 1, tpu_compiler.devices(chip, dims))  # 4 chips
  (most_small, w_small), *_ = speculative.DEFAULT_WINDOWS["tpu"]
  largest = speculative.DEFAULT_WINDOWS["tpu"][-1][0]
  with sharding.activate(mesh):
    assert auto.resolve_window(4 * most_small, 256).speculative_window == w_small
    assert auto.resolve_window(4 * most_small, 4).speculative_window == min(w_small, 4)
    assert auto.resolve_window(4 * (largest + 1), 256).speculative_window == 0
