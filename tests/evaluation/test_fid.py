"""FID / sFID / IS / precision-recall statistics against independent NumPy formulas, the FID
Inception against a functional PyTorch reference (random weights), its weight import, the
feature extractor and the `.npz` evaluation driver."""

import io
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax.evaluation import evaluate as evaluate_cli
from rar_jax.evaluation import fid, inception
from rar_jax.evaluation.inception import InceptionFeatures


def _random_cov(rng, d, scale=1.0):
  a = rng.standard_normal((d, 2 * d))
  return scale * a @ a.T / (2 * d)


def _fd_eigen(mu1, s1, mu2, s2):
  """Independent Frechet distance: tr sqrt(s1 s2) = sum sqrt(eig(s1^1/2 s2 s1^1/2))."""
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
  tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean


# ---------------------------------------------------------------------------------------------
# Frechet distance and statistics.


def test_frechet_distance_matches_eigen_formula():
  rng = np.random.default_rng(0)
  d = 24
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d, 2.0)
  got = fid.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(got, _fd_eigen(mu1, s1, mu2, s2), rtol=1e-8)


def test_frechet_distance_identical_is_zero():
  rng = np.random.default_rng(1)
  feats = rng.standard_normal((500, 32))
  mu, sigma = fid.activation_stats(feats)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_diagonal_closed_form():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
  a, b = rng.uniform(0.1, 3.0, 10), rng.uniform(0.1, 3.0, 10)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_rank_deficient_covariances():
  # Fewer samples than dimensions (singular covariances), as a small sFID run.
  rng = np.random.default_rng(3)
  mu1, s1 = fid.activation_stats(rng.standard_normal((20, 40)))
  mu2, s2 = fid.activation_stats(rng.standard_normal((20, 40)) + 0.5)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the singular-product fallback may warn
    got = fid.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(got)
  np.testing.assert_allclose(got, _fd_eigen(mu1, s1, mu2, s2), rtol=1e-3)


def test_frechet_distance_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="different shapes"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="do not match"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_activation_stats():
  feats = np.random.default_rng(4).standard_normal((50, 6)).astype(np.float32)
  mu, sigma = fid.activation_stats(feats)
  np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64).T), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Inception score.


def _is_direct(p):
  marginal = p.mean(0)
  return np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1)))


def test_inception_score_uniform_and_one_hot():
  assert fid.inception_score(np.full((64, 10), 0.1)) == pytest.approx(1.0, abs=1e-12)
  one_hot = np.eye(10)[np.arange(40) % 10]
  assert fid.inception_score(one_hot) == pytest.approx(10.0, rel=1e-12)


def test_inception_score_matches_formula_splits_and_logits():
  rng = np.random.default_rng(5)
  logits = rng.standard_normal((300, 17)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(fid.inception_score(p, split_size=5000), _is_direct(p), rtol=1e-10)
  splits = np.mean([_is_direct(p[:128]), _is_direct(p[128:256]), _is_direct(p[256:])])
  np.testing.assert_allclose(fid.inception_score(p, split_size=128), splits, rtol=1e-10)
  np.testing.assert_allclose(fid.inception_score(logits, from_logits=True), _is_direct(p), 1e-10)


# ---------------------------------------------------------------------------------------------
# Precision and recall.


def _pr_bruteforce(ref, samples, k):
  """ADM's definition in float64 NumPy: squared distances, k-th neighbour radii, `<=`."""

  def d2(a, b):
    return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0)

  ref, samples = ref.astype(np.float64), samples.astype(np.float64)
  r_ref = np.sort(d2(ref, ref), axis=1)[:, k]
  r_samples = np.sort(d2(samples, samples), axis=1)[:, k]
  d = d2(ref, samples)  # [R, S]
  precision = np.mean(np.any(d <= r_ref[:, None], axis=0))
  recall = np.mean(np.any(d <= r_samples[None, :], axis=1))
  return precision, recall


def test_precision_recall_identical_and_disjoint():
  rng = np.random.default_rng(6)
  a = rng.standard_normal((60, 16)).astype(np.float32)
  assert fid.precision_recall(a, a.copy(), k=3, block_size=16) == (1.0, 1.0)
  assert fid.precision_recall(a, a + 100.0, k=3, block_size=16) == (0.0, 0.0)


@pytest.mark.parametrize("distance_dtype", ["float32", "float16"])
def test_precision_recall_matches_bruteforce(distance_dtype):
  rng = np.random.default_rng(7)
  ref = rng.standard_normal((53, 12)).astype(np.float32)
  samples = (rng.standard_normal((41, 12)) * 1.3 + 0.4).astype(np.float32)
  want = _pr_bruteforce(ref, samples, 3)
  # Blocks of 16 rows: several row and column blocks, the last ones padded.
  got = fid.precision_recall(ref, samples, k=3, block_size=16, distance_dtype=distance_dtype)
  # float16 distances may flip a borderline point (1/41 or 1/53); float32 is exact here.
  tol = 0.0 if distance_dtype == "float32" else 0.025
  np.testing.assert_allclose(got, want, atol=tol + 1e-12)


def test_manifold_radii_kth_neighbour():
  x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]], np.float32)
  # Sorted squared distances per row (self first); k=1 -> nearest other, k=3 -> third.
  np.testing.assert_array_equal(
    fid.manifold_radii(x, k=1, distance_dtype="float32"), [1, 1, 4, 16, 64]
  )
  np.testing.assert_array_equal(
    fid.manifold_radii(x, k=3, block_size=2, distance_dtype="float32"), [49, 36, 16, 49, 196]
  )


def test_float16_distances_round_like_adm_and_fall_back():
  rng = np.random.default_rng(8)
  u = rng.standard_normal((9, 64)).astype(np.float32)
  v = rng.standard_normal((7, 64)).astype(np.float32)
  u16, v16 = u.astype(np.float16), v.astype(np.float16)
  nu = (u16 * u16).astype(np.float32).sum(1).astype(np.float16)
  nv = (v16 * v16).astype(np.float32).sum(1).astype(np.float16)
  uv = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
  want = np.maximum((nu[:, None] - np.float16(2) * uv) + nv[None, :], 0).astype(np.float32)
  got = np.asarray(fid.pairwise_sq_distances(u, v, "float16"))
  # Equal up to the float32 summation order before rounding: at most one float16 ulp.
  np.testing.assert_allclose(got, want, rtol=2**-10, atol=0)
  exact = np.asarray(fid.pairwise_sq_distances(u, v, "float32"))
  np.testing.assert_allclose(exact, ((u[:, None] - v[None]) ** 2).sum(-1), rtol=1e-5, atol=1e-4)
  big_u, big_v = u * 100.0, v * 100.0  # squared norms ~6e5 > float16 max: float32 fallback
  fallback = np.asarray(fid.pairwise_sq_distances(big_u, big_v, "float16"))
  assert np.isfinite(fallback).all()  # float16 would be inf here (max 65504)
  # the fallback runs inside lax.cond, compiled apart from the eager float32 call: the same
  # float32 formula, equal up to XLA's summation order (a float32 ulp or two, seen in CI)
  np.testing.assert_allclose(
    fallback, np.asarray(fid.pairwise_sq_distances(big_u, big_v, "float32")), rtol=1e-6, atol=0
  )


# ---------------------------------------------------------------------------------------------
# Inception network: shapes, weight import, resize, torch parity.


def _official_random_state(seed=0):
  """A random, well-scaled state dict with the official keys and shapes (He-scaled convs,
  BatchNorm near identity), so activations stay O(1) through the 94 conv layers."""
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape in inception.official_shapes().items():
    if key.endswith("conv.weight"):
      fan_in = shape[1] * shape[2] * shape[3]
      value = rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)
    elif key.endswith(("running_var", "bn.weight")):
      value = rng.uniform(0.5, 1.5, shape)
    elif key == "fc.weight":
      value = rng.standard_normal(shape) / np.sqrt(shape[1])
    else:
      value = rng.standard_normal(shape) * 0.1
    state[key] = value.astype(np.float32)
  return state


@pytest.fixture(scope="module")
def state():
  return _official_random_state()


@pytest.fixture(scope="module")
def variables(state):
  return inception.load_weights(state)


@pytest.fixture(scope="module")
def init_shapes():
  images = jnp.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda: dict(inception.InceptionV3().init(jax.random.key(0), images)))


def test_network_output_shapes(init_shapes):
  init = init_shapes
  model = inception.InceptionV3()
  for shape, dtype in (((2, 256, 256, 3), jnp.uint8), ((3, 299, 299, 3), jnp.float32)):
    out = jax.eval_shape(model.apply, init, jax.ShapeDtypeStruct(shape, dtype))
    n = shape[0]
    assert isinstance(out, InceptionFeatures)
    assert out.pool.shape == (n, 2048) and out.spatial.shape == (n, 2023)
    assert out.logits.shape == (n, 1008)
    assert out.pool.dtype == out.spatial.dtype == out.logits.dtype == jnp.float32


def test_converter_builds_the_flax_tree(state, variables, init_shapes):
  init = init_shapes
  shapes = lambda tree: jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), tree)
  assert shapes(variables) == shapes(dict(init))
  assert sum(int(np.prod(s)) for s in inception.official_shapes().values()) == 23_885_392
  conv = state["Mixed_6d.branch7x7_2.conv.weight"]  # (out, in, 1, 7)
  np.testing.assert_array_equal(
    variables["params"]["Mixed_6d"]["branch7x7_2"]["conv"]["kernel"], conv.transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
  bn = variables["batch_stats"]["Conv2d_1a_3x3"]["bn"]
  np.testing.assert_array_equal(bn["var"], state["Conv2d_1a_3x3.bn.running_var"])
  # torch's BatchNorm step counters are accepted and ignored.
  counters = {"Mixed_5b.branch1x1.bn.num_batches_tracked": np.array(0, np.int64)}
  inception.load_weights({**state, **counters})


def test_converter_rejects_bad_keys(state):
  missing = dict(state)
  del missing["Mixed_7c.branch_pool.bn.running_mean"]
  with pytest.raises(
    ValueError, match=r"missing key 'Mixed_7c.branch_pool.bn.running_mean'.*\(192,\)"
  ):
    inception.load_weights(missing)
  with pytest.raises(ValueError, match=r"unexpected key 'AuxLogits.fc.weight'.*\(1000, 768\)"):
    inception.load_weights({**state, "AuxLogits.fc.weight": np.zeros((1000, 768))})
  with pytest.raises(
    ValueError, match=r"'fc.weight' has shape \(1000, 2048\), expected \(1008, 2048\)"
  ):
    inception.load_weights({**state, "fc.weight": np.zeros((1000, 2048))})


def test_load_weights_from_file(state, tmp_path):
  small = {k: v for k, v in state.items() if not k.startswith("Mixed")}
  np.savez(tmp_path / "partial.npz", **small)
  with pytest.raises(ValueError, match="missing key 'Mixed_5b"):
    inception.load_weights(tmp_path / "partial.npz")
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    inception.load_weights(tmp_path / "nope.pth")


def _tf1_resize_numpy(x, size):
  """TF 1.x ResizeBilinear(align_corners=False, half_pixel_centers=False), float32, written
  from the kernel: per axis in = out_index * (in / out); lerp along width, then height."""

  def taps(n):
    scale = np.float32(n) / np.float32(size)
    pos = np.arange(size, dtype=np.float32) * scale
    lo = np.floor(pos).astype(int)
    return lo, np.minimum(lo + 1, n - 1), (pos - lo).astype(np.float32)

  (ylo, yhi, ly), (xlo, xhi, lx) = taps(x.shape[1]), taps(x.shape[2])

  def width(rows):
    return rows[:, :, xlo] + (rows[:, :, xhi] - rows[:, :, xlo]) * lx[None, None, :, None]

  top, bottom = width(x[:, ylo]), width(x[:, yhi])
  return top + (bottom - top) * ly[None, :, None, None]


def test_resize_matches_tf1_kernel():
  rng = np.random.default_rng(9)
  for shape in ((1, 256, 256, 3), (1, 37, 50, 3)):
    x = rng.integers(0, 256, shape).astype(np.float32)
    want = _tf1_resize_numpy(x, 299)
    # Eagerly bit-exact; under jit XLA may fuse the lerps into FMAs (a few float32 ulps).
    np.testing.assert_array_equal(np.asarray(inception.resize_bilinear_tf1(jnp.asarray(x))), want)
    jitted = np.asarray(jax.jit(inception.resize_bilinear_tf1)(x))
    np.testing.assert_allclose(jitted, want, rtol=0, atol=1e-4)


def _torch_reference(torch, state, images):
  """Functional PyTorch FID Inception (NCHW) on host-resized, normalized images."""
  F = torch.nn.functional
  sd = {k: torch.from_numpy(v) for k, v in state.items()}

  def conv(name, x, stride=1, padding=0):
    x = F.conv2d(x, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
    bn = lambda leaf: sd[f"{name}.bn.{leaf}"]
    x = F.batch_norm(
      x, bn("running_mean"), bn("running_var"), bn("weight"), bn("bias"), False, 0.0, 1e-3
    )
    return F.relu(x)

  avg = lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
  cat = lambda *xs: torch.cat(xs, dim=1)

  def block_a(p, x):
    b5 = conv(f"{p}.branch5x5_2", conv(f"{p}.branch5x5_1", x), padding=2)
    b3 = conv(f"{p}.branch3x3dbl_1", x)
    b3 = conv(f"{p}.branch3x3dbl_3", conv(f"{p}.branch3x3dbl_2", b3, padding=1), padding=1)
    return cat(conv(f"{p}.branch1x1", x), b5, b3, conv(f"{p}.branch_pool", avg(x)))

  def block_b(p, x):
    b3 = conv(f"{p}.branch3x3", x, stride=2)
    bd = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), padding=1)
    bd = conv(f"{p}.branch3x3dbl_3", bd, stride=2)
    return cat(b3, bd, F.max_pool2d(x, 3, stride=2))

  def block_c(p, x):
    row, col = (0, 3), (3, 0)
    b1 = conv(f"{p}.branch1x1", x)
    b7 = conv(f"{p}.branch7x7_1", x)
    b7 = conv(f"{p}.branch7x7_3", conv(f"{p}.branch7x7_2", b7, padding=row), padding=col)
    bd = conv(f"{p}.branch7x7dbl_1", x)
    for i, pad in zip(range(2, 6), (col, row, col, row), strict=True):
      bd = conv(f"{p}.branch7x7dbl_{i}", bd, padding=pad)
    return cat(b1, b7, bd, conv(f"{p}.branch_pool", avg(x))), b1

  def block_d(p, x):
    b3 = conv(f"{p}.branch3x3_2", conv(f"{p}.branch3x3_1", x), stride=2)
    b7 = conv(f"{p}.branch7x7x3_1", x)
    b7 = conv(f"{p}.branch7x7x3_3", conv(f"{p}.branch7x7x3_2", b7, padding=(0, 3)), padding=(3, 0))
    b7 = conv(f"{p}.branch7x7x3_4", b7, stride=2)
    return cat(b3, b7, F.max_pool2d(x, 3, stride=2))

  def block_e(p, x, pool):
    b3 = conv(f"{p}.branch3x3_1", x)
    b3 = cat(
      conv(f"{p}.branch3x3_2a", b3, padding=(0, 1)), conv(f"{p}.branch3x3_2b", b3, padding=(1, 0))
    )
    bd = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", x), padding=1)
    bd = cat(
      conv(f"{p}.branch3x3dbl_3a", bd, padding=(0, 1)),
      conv(f"{p}.branch3x3dbl_3b", bd, padding=(1, 0)),
    )
    pooled = F.max_pool2d(x, 3, stride=1, padding=1) if pool == "max" else avg(x)
    return cat(conv(f"{p}.branch1x1", x), b3, bd, conv(f"{p}.branch_pool", pooled))

  x = (_tf1_resize_numpy(images.astype(np.float32), 299) - 128.0) / 128.0
  x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  with torch.no_grad():
    x = conv("Conv2d_2b_3x3", conv("Conv2d_2a_3x3", conv("Conv2d_1a_3x3", x, 2)), padding=1)
    x = F.max_pool2d(x, 3, stride=2)
    x = F.max_pool2d(conv("Conv2d_4a_3x3", conv("Conv2d_3b_1x1", x)), 3, stride=2)
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
      x = block_a(name, x)
    x = block_b("Mixed_6a", x)
    x, _ = block_c("Mixed_6b", x)
    x, _ = block_c("Mixed_6c", x)
    x, mixed_6 = block_c("Mixed_6d", x)
    x, _ = block_c("Mixed_6e", x)
    x = block_e("Mixed_7c", block_e("Mixed_7b", block_d("Mixed_7a", x), "avg"), "max")
    pool = x.mean(dim=(2, 3))
    spatial = mixed_6[:, :7].permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC order
    logits = pool @ sd["fc.weight"].T
  return pool.numpy(), spatial.numpy(), logits.numpy()


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(10).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def jax_features(variables, images):
  return jax.jit(inception.InceptionV3().apply)(variables, images)


def _assert_close(got, want, rel):
  """Every output within rel x its largest magnitude (at least 1)."""
  for name, g, w in zip(InceptionFeatures._fields, got, want, strict=True):
    w = np.asarray(w)
    scale = max(1.0, float(np.abs(w).max()))
    np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=rel * scale, err_msg=name)


def test_matches_torch_reference(state, images, jax_features):
  torch = pytest.importorskip("torch", reason="the PyTorch cross-check needs torch")
  want = _torch_reference(torch, state, images[:1])
  _assert_close([f[:1] for f in jax_features], want, 1e-4)
  assert np.abs(want[1]).max() > 0.1 and np.abs(want[0]).std() > 0.01  # not degenerate


def test_feature_extractor_pads_and_shards(variables, images, jax_features):
  extractor = inception.FeatureExtractor(variables, batch_size=1, devices=jax.devices()[:2])
  assert extractor.batch_size == 2  # rounded up to the device count
  got = extractor(images)  # a full batch, then one image padded to two
  assert all(isinstance(g, np.ndarray) and g.shape[0] == 3 for g in got)
  _assert_close(got, jax_features, 1e-4)


# ---------------------------------------------------------------------------------------------
# .npz streaming and the driver.


@pytest.mark.parametrize("compressed", [False, True])
def test_iter_npz_batches(tmp_path, compressed):
  arr = np.arange(7 * 4 * 5 * 3, dtype=np.uint8).reshape(7, 4, 5, 3)
  path = tmp_path / "x.npz"
  (np.savez_compressed if compressed else np.savez)(path, arr_0=arr, other=np.zeros(2))
  batches = list(fid.iter_npz_batches(path, 3))
  assert [b.shape[0] for b in batches] == [3, 3, 1]
  np.testing.assert_array_equal(np.concatenate(batches), arr)
  assert fid.npz_array_shape(path) == arr.shape
  with pytest.raises(ValueError, match="no array 'missing'"):
    next(fid.iter_npz_batches(path, 3, key="missing"))


class _FakeExtractor:
  """Cheap stand-in: features are fixed random projections of per-image pixel statistics."""

  def __init__(self):
    rng = np.random.default_rng(12)
    # Small feature sizes keep the O(D^3) matrix square roots cheap.
    self.proj = [rng.standard_normal((6, d)).astype(np.float32) for d in (16, 12, 10)]
    self.calls = 0

  def __call__(self, images):
    self.calls += 1
    x = images.astype(np.float32) / 255.0
    stats = np.concatenate([x.mean((1, 2)), x.std((1, 2))], axis=1)  # [B, 6]
    return InceptionFeatures(*(np.tanh(stats @ p) for p in self.proj))


def test_evaluate_driver(tmp_path):
  rng = np.random.default_rng(13)
  ref_images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
  sample_images = np.clip(rng.normal(150, 40, (30, 8, 8, 3)), 0, 255).astype(np.uint8)
  np.savez(tmp_path / "ref.npz", arr_0=ref_images)
  np.savez(tmp_path / "samples.npz", arr_0=sample_images)
  extractor = _FakeExtractor()
  got = fid.evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", extractor, batch_size=16)
  assert extractor.calls == 3 + 2
  ref, samples = extractor(ref_images), extractor(sample_images)
  precision, recall = fid.precision_recall(ref.pool, samples.pool)
  want = {
    "fid": fid.frechet_distance(
      *fid.activation_stats(samples.pool), *fid.activation_stats(ref.pool)
    ),
    "sfid": fid.frechet_distance(
      *fid.activation_stats(samples.spatial), *fid.activation_stats(ref.spatial)
    ),
    "inception_score": fid.inception_score(samples.logits, from_logits=True),
    "precision": precision,
    "recall": recall,
  }
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)

  # Precomputed reference statistics win over the reference images (as in ADM).
  mu, sigma = fid.activation_stats(ref.pool + 1.0)
  mu_s, sigma_s = fid.activation_stats(ref.spatial * 2.0)
  buffer = io.BytesIO()
  np.savez(buffer, arr_0=ref_images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
  (tmp_path / "ref_stats.npz").write_bytes(buffer.getvalue())
  with_stats = fid.evaluate(tmp_path / "samples.npz", tmp_path / "ref_stats.npz", _FakeExtractor())
  fid_want = fid.frechet_distance(*fid.activation_stats(samples.pool), mu, sigma)
  sfid_want = fid.frechet_distance(*fid.activation_stats(samples.spatial), mu_s, sigma_s)
  np.testing.assert_allclose(with_stats["fid"], fid_want, rtol=1e-6)
  np.testing.assert_allclose(with_stats["sfid"], sfid_want, rtol=1e-6)
  assert with_stats["precision"] == got["precision"] and with_stats["recall"] == got["recall"]


def test_evaluate_names_missing_files(tmp_path):
  np.savez(tmp_path / "ref.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
  with pytest.raises(FileNotFoundError, match="--samples=.*nope.npz.*--inception_weights=.*w.pth"):
    evaluate_cli.run(str(tmp_path / "nope.npz"), str(tmp_path / "ref.npz"), str(tmp_path / "w.pth"))
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    fid.evaluate(tmp_path / "nope.npz", tmp_path / "ref.npz", _FakeExtractor())


def test_cli_reports_missing_files(tmp_path):
  cmd = [sys.executable, "-m", "rar_jax.evaluation.evaluate", f"--samples={tmp_path}/s.npz"]
  cmd += [f"--reference={tmp_path}/r.npz", f"--inception_weights={tmp_path}/w.pth"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0
  assert "--samples=" in proc.stderr and "--inception_weights=" in proc.stderr
