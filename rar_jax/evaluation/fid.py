"""FID, sFID, inception score and improved precision/recall as the ADM evaluator computes them
(openai/guided-diffusion `evaluations/evaluator.py`), and a driver over `.npz` sample files.

* FID / sFID: Frechet distance between Gaussians fitted to pool_3 (2048-d) / `mixed_6/conv`
  (2023-d) features; `scipy.linalg.sqrtm` of sigma1 @ sigma2, retried with 1e-6 added to both
  diagonals when the result is not finite, imaginary parts tolerated up to 1e-3 on the
  diagonal.
* Inception score: softmax over the 1008 unbiased logits, exp(E KL(p(y|x) || p(y))) per split
  of `split_size` consecutive samples (ADM: 5000, so 10 splits for 50k), averaged. The one
  deliberate difference: 0 * log 0 counts as 0 (ADM's float32 formula would give NaN).
* Precision / recall (Kynkaanniemi et al. 2019, k = 3): a point's radius is its squared
  distance to its k-th nearest neighbour in its own set (self excluded, as ADM's partition of
  the full row); precision = fraction of samples inside some reference ball, recall = fraction
  of references inside some sample ball (`<=`). ADM computes the squared distances
  |u|^2 - 2 u.v + |v|^2 in float16 (falling back to float32 for a 10000 x 10000 block with a
  non-finite entry); `distance_dtype="float16"` emulates that rounding with
  `lax.reduce_precision` (products accumulated in float32, as a float16 GEMM on a GPU), which
  can still differ from TF by the order of float16 roundings; "float32" computes exactly.

`evaluate` streams `arr_0` of both files through an extractor (see
`rar_jax.evaluation.inception.FeatureExtractor`) and uses the reference file's precomputed
`mu`/`sigma` and `mu_s`/`sigma_s` when present, as ADM does; the sample statistics are always
computed from its images.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from scipy import linalg, special

from rar_jax.evaluation.inception import InceptionFeatures

Array = jax.Array
Extractor = Callable[[np.ndarray], InceptionFeatures]
DISTANCE_DTYPES = ("float16", "float32")
ADM_BLOCK = 10000  # ADM's row/column batch of pairwise distances


# ---------------------------------------------------------------------------------------------
# Statistics.


def activation_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[N, D] activations -> (mean [D], unbiased covariance [D, D]), float64."""
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2 or feats.shape[0] < 2:
    raise ValueError(f"need [N >= 2, D] activations, got shape {feats.shape}")
  return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
  """|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), as ADM / pytorch-fid.

  Raises:
    ValueError: mismatched shapes, or a matrix square root with a large imaginary part.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape:
    raise ValueError(f"mean vectors have different shapes: {mu1.shape} vs {mu2.shape}")
  if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
    raise ValueError(
      f"covariances {sigma1.shape} and {sigma2.shape} do not match the means {mu1.shape}"
    )
  diff = mu1 - mu2
  with warnings.catch_warnings():  # scipy's "singular matrix" note: a non-finite root is handled
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    warnings.warn(
      f"fid: singular product of covariances; adding {eps} to their diagonals", stacklevel=2
    )
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"fid: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row softmax in float64."""
  x = np.asarray(logits, np.float64)
  x = np.exp(x - x.max(axis=-1, keepdims=True))
  return x / x.sum(axis=-1, keepdims=True)


def inception_score(values: np.ndarray, split_size: int = 5000, from_logits: bool = False) -> float:
  """ADM's inception score of [N, C] class probabilities (or logits with `from_logits`):
  the mean over consecutive splits of `split_size` rows of exp(mean_x KL(p(y|x) || p(y)))."""
  probs = softmax(values) if from_logits else np.asarray(values, np.float64)
  if probs.ndim != 2 or probs.shape[0] == 0:
    raise ValueError(f"need [N >= 1, C] probabilities, got shape {probs.shape}")
  scores = []
  for i in range(0, probs.shape[0], split_size):
    part = probs[i : i + split_size]  # [n, C]
    marginal = part.mean(axis=0, keepdims=True)  # [1, C]
    kl = special.xlogy(part, part) - special.xlogy(part, marginal)  # 0 log 0 = 0
    scores.append(np.exp(kl.sum(axis=1).mean()))
  return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------
# Improved precision and recall.


def _round_f16(x: Array) -> Array:
  """Rounds float32 to the nearest float16 value (overflow -> inf), staying float32."""
  return jax.lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)


def _sq_distances(u: Array, v: Array, rnd: Callable[[Array], Array]) -> Array:
  """[R, D], [C, D] -> [R, C] max(|u|^2 - 2 u.v + |v|^2, 0), rounding each step with `rnd`."""
  u, v = rnd(u), rnd(v)
  nu = rnd(jnp.sum(rnd(u * u), axis=1))  # [R]
  nv = rnd(jnp.sum(rnd(v * v), axis=1))  # [C]
  uv = rnd(jnp.dot(u, v.T, precision=jax.lax.Precision.HIGHEST))  # [R, C]
  d = rnd(rnd(nu[:, None] - rnd(2.0 * uv)) + nv[None, :])
  return jnp.maximum(d, 0.0)


def pairwise_sq_distances(u: Array, v: Array, distance_dtype: str = "float16") -> Array:
  """Squared Euclidean distances [R, C] of float32 rows, as ADM's `DistanceBlock`: float16
  rounding unless an entry is not finite, then float32 (or float32 throughout)."""
  if distance_dtype not in DISTANCE_DTYPES:
    raise ValueError(f"distance_dtype must be one of {DISTANCE_DTYPES}, got {distance_dtype!r}")
  u, v = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
  if distance_dtype == "float32":
    return _sq_distances(u, v, lambda x: x)
  d16 = _sq_distances(u, v, _round_f16)
  return jax.lax.cond(
    jnp.all(jnp.isfinite(d16)), lambda: d16, lambda: _sq_distances(u, v, lambda x: x)
  )


def _masked_distances(u, v, n_u, n_v, distance_dtype):
  """Distances of zero-padded blocks with +inf at padded rows/columns."""
  d = pairwise_sq_distances(u, v, distance_dtype)
  valid = (jnp.arange(u.shape[0]) < n_u)[:, None] & (jnp.arange(v.shape[0]) < n_v)[None, :]
  return jnp.where(valid, d, jnp.inf)


@functools.partial(jax.jit, static_argnames=("k", "distance_dtype"))
def _knn_update(rows, cols, n_rows, n_cols, best, k, distance_dtype):
  """Merges one column block into the k+1 smallest distances per row, `best` [R, k+1]."""
  d = _masked_distances(rows, cols, n_rows, n_cols, distance_dtype)  # [R, C]
  neg, _ = jax.lax.top_k(-jnp.concatenate([best, d], axis=1), k + 1)
  return -neg  # ascending


@functools.partial(jax.jit, static_argnames=("distance_dtype",))
def _inside_block(ref, ref_radii, samples, sample_radii, n_ref, n_samples, distance_dtype):
  """(ref rows inside some sample ball [R], sample rows inside some reference ball [S])."""
  d = _masked_distances(ref, samples, n_ref, n_samples, distance_dtype)  # [R, S]
  ref_in = jnp.any(d <= sample_radii[None, :], axis=1)
  samples_in = jnp.any(d <= ref_radii[:, None], axis=0)
  return ref_in, samples_in


def _blocks(x: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray, int]]:
  """(start, zero-padded [size, D] block, valid rows) over the rows of x."""
  for start in range(0, x.shape[0], size):
    block = x[start : start + size]
    n = block.shape[0]
    if n < size:
      block = np.concatenate([block, np.zeros((size - n, *block.shape[1:]), block.dtype)])
    yield start, block, n


def manifold_radii(
  feats: np.ndarray, k: int = 3, block_size: int = ADM_BLOCK, distance_dtype: str = "float16"
) -> np.ndarray:
  """[N, D] -> [N] squared distance of each row to its k-th nearest other row (float32)."""
  feats = np.asarray(feats, np.float32)
  n = feats.shape[0]
  if n <= k:
    raise ValueError(f"need more than k={k} feature vectors, got {n}")
  size = min(block_size, n)
  radii = np.empty([n], np.float32)
  for start, rows, n_rows in _blocks(feats, size):
    best = jnp.full((size, k + 1), jnp.inf, jnp.float32)
    for _, cols, n_cols in _blocks(feats, size):
      best = _knn_update(rows, cols, n_rows, n_cols, best, k, distance_dtype)
    radii[start : start + n_rows] = np.asarray(best[:n_rows, k])
  return radii


def precision_recall(
  ref_feats: np.ndarray,
  sample_feats: np.ndarray,
  k: int = 3,
  block_size: int = ADM_BLOCK,
  distance_dtype: str = "float16",
) -> tuple[float, float]:
  """ADM's improved (precision, recall) of samples against references, [N, D] features each."""
  ref = np.asarray(ref_feats, np.float32)
  samples = np.asarray(sample_feats, np.float32)
  if ref.ndim != 2 or samples.ndim != 2 or ref.shape[1] != samples.shape[1]:
    raise ValueError(f"need [N, D] features of one D, got {ref.shape} and {samples.shape}")
  ref_radii = manifold_radii(ref, k, block_size, distance_dtype)
  sample_radii = manifold_radii(samples, k, block_size, distance_dtype)
  r_size, s_size = min(block_size, ref.shape[0]), min(block_size, samples.shape[0])
  ref_in = np.zeros([ref.shape[0]], bool)
  samples_in = np.zeros([samples.shape[0]], bool)
  for r0, r_block, n_r in _blocks(ref, r_size):
    r_radii = np.zeros([r_size], np.float32)
    r_radii[:n_r] = ref_radii[r0 : r0 + n_r]
    for s0, s_block, n_s in _blocks(samples, s_size):
      s_radii = np.zeros([s_size], np.float32)
      s_radii[:n_s] = sample_radii[s0 : s0 + n_s]
      r_in, s_in = _inside_block(r_block, r_radii, s_block, s_radii, n_r, n_s, distance_dtype)
      ref_in[r0 : r0 + n_r] |= np.asarray(r_in)[:n_r]
      samples_in[s0 : s0 + n_s] |= np.asarray(s_in)[:n_s]
  return float(samples_in.mean()), float(ref_in.mean())


# ---------------------------------------------------------------------------------------------
# .npz streaming and the evaluation driver.


def _read_exact(f: Any, size: int, path: str) -> bytes:
  chunks, got = [], 0
  while got < size:
    chunk = f.read(size - got)
    if not chunk:
      raise ValueError(f"{path}: truncated array data ({got} of {size} bytes)")
    chunks.append(chunk)
    got += len(chunk)
  return b"".join(chunks)


def _read_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
  """(shape, fortran_order, dtype) of an `.npy` stream at its start; None for header versions
  other than 1.0 / 2.0."""
  version = np.lib.format.read_magic(f)
  if version == (1, 0):
    return np.lib.format.read_array_header_1_0(f)
  if version == (2, 0):
    return np.lib.format.read_array_header_2_0(f)
  return None


@contextlib.contextmanager
def named_npz_errors(path: str) -> Iterator[None]:
  """Re-raises a corrupt archive's zipfile/zlib errors as a ValueError naming the file."""
  try:
    yield
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    raise ValueError(f"{path}: corrupt .npz file ({e})") from e


def _open_member(archive: zipfile.ZipFile, path: str, key: str) -> Any:
  if f"{key}.npy" not in archive.namelist():
    have = [n[: -len(".npy")] for n in archive.namelist()]
    raise ValueError(f"{path}: no array {key!r} (has {have})")
  return archive.open(f"{key}.npy")


def iter_npz_batches(
  path: str | os.PathLike, batch_size: int, key: str = "arr_0"
) -> Iterator[np.ndarray]:
  """Yields consecutive [<= batch_size, ...] slices of `key` in an `.npz` without loading it
  whole (plain or compressed members; Fortran-order or v3 headers are loaded in memory)."""
  path = os.fspath(path)
  with named_npz_errors(path):
    yield from _npz_batches(path, batch_size, key)


def _npz_batches(path: str, batch_size: int, key: str) -> Iterator[np.ndarray]:
  with zipfile.ZipFile(path) as archive, _open_member(archive, path, key) as f:
    header = _read_header(f)
    if header is not None and not header[1] and not header[2].hasobject:
      shape, _, dtype = header
      row = int(np.prod(shape[1:], dtype=np.int64))
      for start in range(0, shape[0], batch_size):
        n = min(batch_size, shape[0] - start)
        data = _read_exact(f, n * row * dtype.itemsize, path)
        yield np.frombuffer(data, dtype).reshape(n, *shape[1:])
      return
  with np.load(path, allow_pickle=False) as npz:
    arr = npz[key]
  for start in range(0, arr.shape[0], batch_size):
    yield arr[start : start + batch_size]


def npz_array_header(path: str | os.PathLike, key: str = "arr_0") -> tuple[tuple[int, ...], Any]:
  """(shape, dtype) of one array of an `.npz`, read from its header; ValueError naming the file
  when it is not a readable `.npz` or lacks the array."""
  path = os.fspath(path)
  with named_npz_errors(path):
    with zipfile.ZipFile(path) as archive, _open_member(archive, path, key) as f:
      header = _read_header(f)
    if header is not None:
      return tuple(header[0]), header[2]
    with np.load(path, allow_pickle=False) as npz:
      return tuple(npz[key].shape), npz[key].dtype


def npz_array_shape(path: str | os.PathLike, key: str = "arr_0") -> tuple[int, ...]:
  """Shape of one array of an `.npz`, read from its header."""
  return npz_array_header(path, key)[0]


def check_images(path: str | os.PathLike) -> tuple[int, ...]:
  """Checks that `arr_0` of an `.npz` holds uint8 images [N > 0, H, W, 3] in [0, 255], reading
  the header and the first 256 images only; returns the shape.

  Raises:
    ValueError: naming the file: not a readable `.npz`, no `arr_0`, another shape, a dtype other
      than uint8 (e.g. float images in [0, 1]), or first images whose values all lie in [0, 1].
  """
  path = os.fspath(path)
  shape, dtype = npz_array_header(path)
  if len(shape) != 4 or shape[-1] != 3 or shape[0] == 0:
    raise ValueError(f"{path}: arr_0 must be non-empty images [N, H, W, 3], got {shape}")
  if dtype != np.uint8:
    raise ValueError(
      f"{path}: arr_0 has dtype {dtype}; images must be uint8 in [0, 255] (float images in"
      " [0, 1]: multiply by 255, round and cast to uint8)"
    )
  first = next(iter_npz_batches(path, 256))
  if first.max() <= 1:
    raise ValueError(
      f"{path}: the first {len(first)} images only hold values 0 and 1; images must be uint8 in"
      " [0, 255] (were [0, 1] floats cast to uint8 without multiplying by 255?)"
    )
  return shape


def compute_activations(
  path: str | os.PathLike, extractor: Extractor, batch_size: int | None = None
) -> InceptionFeatures:
  """Features of every image of `arr_0` ([N, H, W, 3] in [0, 255]), `batch_size` images per
  read (default: the extractor's `batch_size`, else 256). An extractor with `dispatch`/`fetch`
  (`FeatureExtractor`) keeps one batch in flight and caps reads at its `batch_size`."""
  path = os.fspath(path)
  shape = check_images(path)
  batch_size = batch_size or getattr(extractor, "batch_size", 256)
  pipelined = hasattr(extractor, "dispatch") and hasattr(extractor, "fetch")
  if pipelined:
    batch_size = min(batch_size, extractor.batch_size)
  parts: list[InceptionFeatures] = []
  pending = None
  start, last_log = time.time(), time.time()
  for batch in iter_npz_batches(path, batch_size):
    if pipelined:
      nxt = extractor.dispatch(batch)
      if pending is not None:
        parts.append(extractor.fetch(pending))
      pending = nxt
    else:
      parts.append(extractor(batch))
    if time.time() - last_log > 30:
      done = sum(p.pool.shape[0] for p in parts)
      logging.info("%s: %d / %d images (%.0f s)", path, done, shape[0], time.time() - start)
      last_log = time.time()
  if pending is not None:
    parts.append(extractor.fetch(pending))
  return InceptionFeatures(*(np.concatenate(p) for p in zip(*parts, strict=True)))


def _reference_stats(path: str, suffix: str) -> tuple[np.ndarray, np.ndarray] | None:
  """Precomputed (mu{suffix}, sigma{suffix}) of a reference `.npz` ("" for pool_3, "_s" for
  the spatial features), if it has them."""
  with named_npz_errors(path), np.load(path, allow_pickle=False) as npz:
    if f"mu{suffix}" in npz.files and f"sigma{suffix}" in npz.files:
      return npz[f"mu{suffix}"], npz[f"sigma{suffix}"]
  return None


def evaluate(
  sample_npz: str | os.PathLike,
  ref_npz: str | os.PathLike,
  extractor: Extractor,
  batch_size: int | None = None,
  k: int = 3,
  split_size: int = 5000,
  distance_dtype: str = "float16",
) -> dict[str, float]:
  """ADM's metrics of a sample batch against a reference batch (both `.npz` with `arr_0` images
  [N, H, W, 3] in [0, 255]): {"fid", "sfid", "inception_score", "precision", "recall"}.

  The reference's `mu`/`sigma` (pool_3) and `mu_s`/`sigma_s` (spatial) are used when present;
  its images always give the precision/recall features. Sample statistics are computed.
  """
  sample_npz, ref_npz = os.fspath(sample_npz), os.fspath(ref_npz)
  for p in (sample_npz, ref_npz):
    if not os.path.isfile(p):
      raise FileNotFoundError(f"no such .npz file: {p}")
  for p in (sample_npz, ref_npz):  # both before the first Inception pass
    check_images(p)
  logging.info("reference activations: %s", ref_npz)
  ref = compute_activations(ref_npz, extractor, batch_size)
  logging.info("sample activations: %s", sample_npz)
  samples = compute_activations(sample_npz, extractor, batch_size)
  ref_pool = _reference_stats(ref_npz, "") or activation_stats(ref.pool)
  ref_spatial = _reference_stats(ref_npz, "_s") or activation_stats(ref.spatial)
  logging.info("statistics and distances")
  precision, recall = precision_recall(ref.pool, samples.pool, k, distance_dtype=distance_dtype)
  return {
    "fid": frechet_distance(*activation_stats(samples.pool), *ref_pool),
    "sfid": frechet_distance(*activation_stats(samples.spatial), *ref_spatial),
    "inception_score": inception_score(samples.logits, split_size, from_logits=True),
    "precision": precision,
    "recall": recall,
  }
