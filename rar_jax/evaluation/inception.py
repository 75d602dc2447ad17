"""The FID Inception-v3 (TF `inception-2015-12-05`, the network of the ADM evaluator) in Flax
Linen, NHWC, with its weight import from the pytorch-fid state dict and a jitted,
data-parallel feature extractor.

Weights: the user downloads the pytorch-fid port of the TF graph's weights once (nothing here
downloads anything):

  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

`load_weights(path)` reads it with the tensor-only reader `rar_jax.infra.torch_io`
(no torch, no pickled code runs); an `.npz` with the same keys works too. The torch-fidelity file
`weights-inception-2015-12-05-6726825d.pth` has the same keys. A legacy (pre zip-format) torch
file is refused by the reader with a hint: re-save it once with
`torch.save(torch.load(p), new_p)`.

What the network computes, matching the TF graph that ADM's `evaluations/evaluator.py` imports
(`classify_image_graph_def.pb`), as ported to PyTorch by pytorch-fid / torch-fidelity:

* Input: uint8 or float images [N, H, W, 3] in [0, 255]. They are resized to 299 x 299 with
  TF 1.x `ResizeBilinear` semantics (align_corners=False, no half-pixel centres: source
  coordinate = i * in / out, clamped at the last pixel), the way the graph does it, then mapped
  to [-1, 1] by (x - 128) / 128 as the graph does (not pytorch-fid's 2 * x / 255 - 1, nor
  torch's half-pixel `interpolate`). The resize reproduces TF's float32 arithmetic and order
  (along the width, then the height): bit-exact eagerly; under jit XLA may fuse the lerps into
  FMAs, a few float32 ulps (<= 5e-5 on [0, 255]).
* Blocks: the torchvision Inception-v3 layout with the FID graph's quirks: every conv is
  bias-free conv + BatchNorm (eps 1e-3, running statistics) + ReLU; the 3x3 average pools of
  the A/C/E blocks exclude padding from the count (TF 'SAME'); the last E block (Mixed_7c)
  max-pools in its pool branch.
* Outputs (`InceptionFeatures`):
  - `pool` [N, 2048]: `pool_3`, the global average of Mixed_7c (FID, precision/recall).
  - `spatial` [N, 2023]: `mixed_6/conv`, i.e. the ReLU output of the 1x1 branch of the graph's
    `mixed_6` block, which is Mixed_6d in torchvision naming (graph blocks mixed, mixed_1,
    mixed_2 are Mixed_5b-d, mixed_3 is Mixed_6a, mixed_4..7 are Mixed_6b-e), first 7 channels,
    [N, 17, 17, 7] flattened in NHWC order as ADM does (sFID).
  - `logits` [N, 1008]: pool @ fc weight **without the bias**: ADM's inception score takes
    the weight of `softmax/logits/MatMul` only (torch-fidelity's 'logits_unbiased').
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rar_jax.infra import torch_convert

Array = jax.Array
Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...}
Shapes = dict[str, tuple[int, ...]]  # torch state-dict key -> shape

FID_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
  "pt_inception-2015-12-05-6726825d.pth"
)
INPUT_SIZE = 299
BN_EPS = 1e-3
NUM_CLASSES = 1008  # the graph's classifier rows
POOL_DIM = 2048  # pool_3 features
SPATIAL_CHANNELS = 7
SPATIAL_DIM = SPATIAL_CHANNELS * 17 * 17  # 2023 at the 299 x 299 input
WHAT = "Inception state dict"  # how the errors name the weights


class InceptionFeatures(NamedTuple):
  """pool [N, 2048], spatial [N, 2023], logits [N, 1008] (unbiased, see module docstring)."""

  pool: Any
  spatial: Any
  logits: Any


# ---------------------------------------------------------------------------------------------
# Preprocessing.


def _tf1_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lower/upper source indices and float32 weights of TF 1.x legacy bilinear resizing."""
  scale = np.float32(in_size) / np.float32(out_size)
  pos = np.arange(out_size, dtype=np.float32) * scale  # float32, as the TF kernel
  lower = np.floor(pos).astype(np.int32)
  upper = np.minimum(lower + 1, in_size - 1).astype(np.int32)
  lerp = (pos - lower.astype(np.float32)).astype(np.float32)
  return lower, upper, lerp


def resize_bilinear_tf1(images: Array, size: int = INPUT_SIZE) -> Array:
  """float32 [N, H, W, C] -> [N, size, size, C], TF 1.x `ResizeBilinear(align_corners=False)`
  (half_pixel_centers=False): interpolate along the width, then along the height."""
  _, h, w, _ = images.shape
  y_lo, y_hi, y_lerp = _tf1_bilinear_taps(h, size)
  x_lo, x_hi, x_lerp = _tf1_bilinear_taps(w, size)
  x_lerp = jnp.asarray(x_lerp)[None, None, :, None]  # [1, 1, size, 1]
  y_lerp = jnp.asarray(y_lerp)[None, :, None, None]  # [1, size, 1, 1]

  def along_width(rows: Array) -> Array:  # [N, size, W, C] -> [N, size, size, C]
    left, right = jnp.take(rows, x_lo, axis=2), jnp.take(rows, x_hi, axis=2)
    return left + (right - left) * x_lerp

  top = along_width(jnp.take(images, y_lo, axis=1))
  bottom = along_width(jnp.take(images, y_hi, axis=1))
  return top + (bottom - top) * y_lerp


def preprocess(images: Array, size: int = INPUT_SIZE) -> Array:
  """uint8/float [N, H, W, 3] in [0, 255] -> float32 [N, size, size, 3] in [-1, 1]."""
  x = resize_bilinear_tf1(images.astype(jnp.float32), size)
  return (x - 128.0) / 128.0


# ---------------------------------------------------------------------------------------------
# Network.


class BasicConv(nn.Module):
  """Bias-free conv -> BatchNorm (eps 1e-3, running statistics) -> ReLU; torch padding."""

  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      self.kernel,
      strides=(self.strides, self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=self.precision,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: Array) -> Array:
  """3x3, stride 1, TF 'SAME' average pool: padded positions are not counted."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_valid_s2(x: Array) -> Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b-d: 35 x 35, [N, 35, 35, cin] -> [N, 35, 35, 224 + pool_features]."""

  pool_features: int
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = lambda f, k, name, p=(0, 0): BasicConv(
      f, k, padding=p, precision=self.precision, name=name
    )
    b1 = conv(64, (1, 1), "branch1x1")(x)
    b5 = conv(48, (1, 1), "branch5x5_1")(x)
    b5 = conv(64, (5, 5), "branch5x5_2", (2, 2))(b5)
    b3 = conv(64, (1, 1), "branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), "branch3x3dbl_2", (1, 1))(b3)
    b3 = conv(96, (3, 3), "branch3x3dbl_3", (1, 1))(b3)
    bp = conv(self.pool_features, (1, 1), "branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction [N, 35, 35, 288] -> [N, 17, 17, 768]."""

  precision: str = "highest"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = BasicConv(384, (3, 3), strides=2, precision=self.precision, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), precision=self.precision, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), precision=self.precision, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, precision=self.precision, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_valid_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: [N, 17, 17, 768] -> ([N, 17, 17, 768], the 1x1 branch [N, 17, 17, 192])."""

  channels_7x7: int
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    c7 = self.channels_7x7
    conv = lambda f, k, name, p=(0, 0): BasicConv(
      f, k, padding=p, precision=self.precision, name=name
    )
    row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) of the factorized 7x7
    b1 = conv(192, (1, 1), "branch1x1")(x)
    b7 = conv(c7, (1, 1), "branch7x7_1")(x)
    b7 = conv(c7, row[0], "branch7x7_2", row[1])(b7)
    b7 = conv(192, col[0], "branch7x7_3", col[1])(b7)
    bd = conv(c7, (1, 1), "branch7x7dbl_1")(x)
    bd = conv(c7, col[0], "branch7x7dbl_2", col[1])(bd)
    bd = conv(c7, row[0], "branch7x7dbl_3", row[1])(bd)
    bd = conv(c7, col[0], "branch7x7dbl_4", col[1])(bd)
    bd = conv(192, row[0], "branch7x7dbl_5", row[1])(bd)
    bp = conv(192, (1, 1), "branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1), b1


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction [N, 17, 17, 768] -> [N, 8, 8, 1280]."""

  precision: str = "highest"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = lambda f, k, name, s=1, p=(0, 0): BasicConv(
      f, k, strides=s, padding=p, precision=self.precision, name=name
    )
    b3 = conv(192, (1, 1), "branch3x3_1")(x)
    b3 = conv(320, (3, 3), "branch3x3_2", 2)(b3)
    b7 = conv(192, (1, 1), "branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), "branch7x7x3_2", 1, (0, 3))(b7)
    b7 = conv(192, (7, 1), "branch7x7x3_3", 1, (3, 0))(b7)
    b7 = conv(192, (3, 3), "branch7x7x3_4", 2)(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_valid_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (`pool="avg"`) and Mixed_7c (`pool="max"`, the FID graph's quirk):
  [N, 8, 8, cin] -> [N, 8, 8, 2048]."""

  pool: str = "avg"
  precision: str = "highest"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = lambda f, k, name, p=(0, 0): BasicConv(
      f, k, padding=p, precision=self.precision, name=name
    )
    b1 = conv(320, (1, 1), "branch1x1")(x)
    b3 = conv(384, (1, 1), "branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        conv(384, (1, 3), "branch3x3_2a", (0, 1))(b3),
        conv(384, (3, 1), "branch3x3_2b", (1, 0))(b3),
      ],
      axis=-1,
    )
    bd = conv(448, (1, 1), "branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), "branch3x3dbl_2", (1, 1))(bd)
    bd = jnp.concatenate(
      [
        conv(384, (1, 3), "branch3x3dbl_3a", (0, 1))(bd),
        conv(384, (3, 1), "branch3x3dbl_3b", (1, 0))(bd),
      ],
      axis=-1,
    )
    if self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    elif self.pool == "avg":
      pooled = _avg_pool_3x3_same(x)
    else:
      raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
    bp = conv(192, (1, 1), "branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Classifier(nn.Module):
  """The 2048 -> 1008 `fc` layer; ADM's logits skip its bias."""

  @nn.compact
  def __call__(self, x: Array, use_bias: bool = False) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (POOL_DIM, NUM_CLASSES))
    bias = self.param("bias", nn.initializers.zeros_init(), (NUM_CLASSES,))
    y = jnp.dot(x, kernel, precision=jax.lax.Precision.HIGHEST)
    return y + bias if use_bias else y


class InceptionV3(nn.Module):
  """FID Inception-v3. `__call__`: images [N, H, W, 3] in [0, 255] -> `InceptionFeatures`.

  Submodule names are the torchvision ones, so the state dict maps one-to-one. `precision`
  applies to every conv ("highest" keeps float32 on TPU/GPU, as the TF graph).
  """

  precision: str = "highest"
  input_size: int = INPUT_SIZE

  @nn.compact
  def __call__(self, images: Array) -> InceptionFeatures:
    p = self.precision
    x = preprocess(images, self.input_size)  # [N, 299, 299, 3]
    x = BasicConv(32, (3, 3), strides=2, precision=p, name="Conv2d_1a_3x3")(x)  # [N, 149, 149, 32]
    x = BasicConv(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)  # [N, 147, 147, 32]
    x = BasicConv(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_valid_s2(x)  # [N, 73, 73, 64]
    x = BasicConv(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)  # [N, 71, 71, 192]
    x = _max_pool_3x3_valid_s2(x)  # [N, 35, 35, 192]
    x = InceptionA(32, precision=p, name="Mixed_5b")(x)  # [N, 35, 35, 256]
    x = InceptionA(64, precision=p, name="Mixed_5c")(x)  # [N, 35, 35, 288]
    x = InceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)  # [N, 17, 17, 768]
    x, _ = InceptionC(128, precision=p, name="Mixed_6b")(x)
    x, _ = InceptionC(160, precision=p, name="Mixed_6c")(x)
    x, mixed_6_conv = InceptionC(160, precision=p, name="Mixed_6d")(x)  # graph's mixed_6
    x, _ = InceptionC(192, precision=p, name="Mixed_6e")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)  # [N, 8, 8, 1280]
    x = InceptionE("avg", precision=p, name="Mixed_7b")(x)  # [N, 8, 8, 2048]
    x = InceptionE("max", precision=p, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))  # [N, 2048]
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS]  # [N, 17, 17, 7]
    spatial = spatial.reshape(spatial.shape[0], -1)  # [N, 2023], (h, w, c) order
    logits = Classifier(name="fc")(pool)  # [N, 1008]
    return InceptionFeatures(pool, spatial, logits)


# ---------------------------------------------------------------------------------------------
# Jitted, data-parallel extractor.


class FeatureExtractor:
  """Callable: images [B, H, W, 3] (uint8 or float in [0, 255], host numpy) -> numpy
  `InceptionFeatures`. Batches are padded to a fixed `batch_size` (rounded up to a multiple of
  the local device count) so each image size compiles once, and sharded over the local devices
  (single-process data parallelism)."""

  def __init__(
    self,
    variables: Variables,
    batch_size: int = 256,
    devices: Sequence[Any] | None = None,
    precision: str = "highest",
  ):
    devices = list(jax.local_devices() if devices is None else devices)
    self.mesh = Mesh(np.asarray(devices), ("data",))
    n = len(devices)
    self.batch_size = -(-max(int(batch_size), 1) // n) * n
    self._batch = NamedSharding(self.mesh, PartitionSpec("data"))
    replicated = NamedSharding(self.mesh, PartitionSpec())
    self.variables = jax.device_put(variables, replicated)
    model = InceptionV3(precision=precision)
    self._apply = jax.jit(
      lambda v, x: model.apply(v, x), in_shardings=(replicated, self._batch), out_shardings=None
    )

  @classmethod
  def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> FeatureExtractor:
    """Extractor with weights from `load_weights(path)`."""
    return cls(load_weights(path), **kwargs)

  def dispatch(self, images: np.ndarray) -> tuple[InceptionFeatures, int]:
    """Starts the features of up to `batch_size` images; returns (device outputs, count)."""
    images = np.asarray(images)
    n = images.shape[0]
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be [B, H, W, 3], got {images.shape}")
    if not 0 < n <= self.batch_size:
      raise ValueError(f"batch of {n} images, expected 1..{self.batch_size}")
    if n < self.batch_size:
      pad = np.zeros((self.batch_size - n, *images.shape[1:]), images.dtype)
      images = np.concatenate([images, pad])
    return self._apply(self.variables, jax.device_put(images, self._batch)), n

  @staticmethod
  def fetch(pending: tuple[InceptionFeatures, int]) -> InceptionFeatures:
    """Host numpy float32 outputs of a `dispatch`, padding removed."""
    out, n = pending
    return InceptionFeatures(*(np.asarray(a, np.float32)[:n] for a in out))

  def __call__(self, images: np.ndarray) -> InceptionFeatures:
    images = np.asarray(images)
    parts = [
      self.fetch(self.dispatch(images[i : i + self.batch_size]))
      for i in range(0, images.shape[0], self.batch_size)
    ]
    return InceptionFeatures(*(np.concatenate(p) for p in zip(*parts, strict=True)))


# ------------------------------------------------------------------------------------------------
# Weight import: the pytorch-fid state-dict layout, every key and shape checked, converted to
# the Flax variables {"params", "batch_stats"}.


def _conv_bn(cin: int, cout: int, kh: int, kw: int) -> Shapes:
  return {
    "conv.weight": (cout, cin, kh, kw),
    "bn.weight": (cout,),
    "bn.bias": (cout,),
    "bn.running_mean": (cout,),
    "bn.running_var": (cout,),
  }


def _block(prefix: str, convs: Sequence[tuple[str, int, int, int, int]]) -> Shapes:
  """{f"{prefix}.{name}.{leaf}": shape} for (name, cin, cout, kh, kw) conv+bn layers."""
  out = {}
  for name, cin, cout, kh, kw in convs:
    for leaf, shape in _conv_bn(cin, cout, kh, kw).items():
      out[f"{prefix}.{name}.{leaf}" if prefix else f"{name}.{leaf}"] = shape
  return out


def _a(prefix: str, cin: int, pool_features: int) -> Shapes:
  return _block(
    prefix,
    [
      ("branch1x1", cin, 64, 1, 1),
      ("branch5x5_1", cin, 48, 1, 1),
      ("branch5x5_2", 48, 64, 5, 5),
      ("branch3x3dbl_1", cin, 64, 1, 1),
      ("branch3x3dbl_2", 64, 96, 3, 3),
      ("branch3x3dbl_3", 96, 96, 3, 3),
      ("branch_pool", cin, pool_features, 1, 1),
    ],
  )


def _c(prefix: str, c7: int) -> Shapes:
  return _block(
    prefix,
    [
      ("branch1x1", 768, 192, 1, 1),
      ("branch7x7_1", 768, c7, 1, 1),
      ("branch7x7_2", c7, c7, 1, 7),
      ("branch7x7_3", c7, 192, 7, 1),
      ("branch7x7dbl_1", 768, c7, 1, 1),
      ("branch7x7dbl_2", c7, c7, 7, 1),
      ("branch7x7dbl_3", c7, c7, 1, 7),
      ("branch7x7dbl_4", c7, c7, 7, 1),
      ("branch7x7dbl_5", c7, 192, 1, 7),
      ("branch_pool", 768, 192, 1, 1),
    ],
  )


def _e(prefix: str, cin: int) -> Shapes:
  return _block(
    prefix,
    [
      ("branch1x1", cin, 320, 1, 1),
      ("branch3x3_1", cin, 384, 1, 1),
      ("branch3x3_2a", 384, 384, 1, 3),
      ("branch3x3_2b", 384, 384, 3, 1),
      ("branch3x3dbl_1", cin, 448, 1, 1),
      ("branch3x3dbl_2", 448, 384, 3, 3),
      ("branch3x3dbl_3a", 384, 384, 1, 3),
      ("branch3x3dbl_3b", 384, 384, 3, 1),
      ("branch_pool", cin, 192, 1, 1),
    ],
  )


def _official_shapes() -> Shapes:
  """Every key of the pytorch-fid FID Inception state dict with its torch shape."""
  s = _block(
    "",
    [
      ("Conv2d_1a_3x3", 3, 32, 3, 3),
      ("Conv2d_2a_3x3", 32, 32, 3, 3),
      ("Conv2d_2b_3x3", 32, 64, 3, 3),
      ("Conv2d_3b_1x1", 64, 80, 1, 1),
      ("Conv2d_4a_3x3", 80, 192, 3, 3),
    ],
  )
  s |= _a("Mixed_5b", 192, 32) | _a("Mixed_5c", 256, 64) | _a("Mixed_5d", 288, 64)
  s |= _block(
    "Mixed_6a",
    [
      ("branch3x3", 288, 384, 3, 3),
      ("branch3x3dbl_1", 288, 64, 1, 1),
      ("branch3x3dbl_2", 64, 96, 3, 3),
      ("branch3x3dbl_3", 96, 96, 3, 3),
    ],
  )
  s |= _c("Mixed_6b", 128) | _c("Mixed_6c", 160) | _c("Mixed_6d", 160) | _c("Mixed_6e", 192)
  s |= _block(
    "Mixed_7a",
    [
      ("branch3x3_1", 768, 192, 1, 1),
      ("branch3x3_2", 192, 320, 3, 3),
      ("branch7x7x3_1", 768, 192, 1, 1),
      ("branch7x7x3_2", 192, 192, 1, 7),
      ("branch7x7x3_3", 192, 192, 7, 1),
      ("branch7x7x3_4", 192, 192, 3, 3),
    ],
  )
  s |= _e("Mixed_7b", 1280) | _e("Mixed_7c", 2048)
  s["fc.weight"] = (NUM_CLASSES, POOL_DIM)
  s["fc.bias"] = (NUM_CLASSES,)
  return s


_BN_LEAVES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


def _tensor(key: str, shape: tuple[int, ...]) -> torch_convert.Tensor:
  """Where the torch tensor `key` goes in the Flax variables (the module names are the
  torchvision ones): a conv kernel, a BatchNorm scale/bias/statistic, or the transposed fc."""
  *mods, layer, leaf = key.split(".")
  if layer == "fc":
    if leaf == "bias":
      return torch_convert.Tensor(shape, ("params", "fc", "bias"))
    transpose = torch_convert.transpose
    return torch_convert.Tensor(shape, ("params", "fc", "kernel"), transpose, transpose)
  if layer == "conv":
    return torch_convert.conv(shape, ("params", *mods, "conv", "kernel"))
  collection, name = _BN_LEAVES[leaf]
  return torch_convert.Tensor(shape, (collection, *mods, "bn", name))


def table() -> dict[str, torch_convert.Tensor]:
  """Every pytorch-fid tensor: key -> torch shape (conv weights (out, in, kh, kw)) and its place
  in the Flax variables {"params", "batch_stats"} of `InceptionV3`."""
  return {key: _tensor(key, shape) for key, shape in _official_shapes().items()}


_TABLE = table()


def official_shapes() -> Shapes:
  """Every key of the pytorch-fid FID Inception state dict with its torch shape (conv weights
  (out, in, kh, kw)). BatchNorm `num_batches_tracked` counters are optional and ignored."""
  return torch_convert.shapes(_TABLE)


def _is_optional(key: str) -> bool:
  """BatchNorm step counters (absent from the TF-converted file, saved by newer torch)."""
  suffix = "num_batches_tracked"
  return key.endswith(f".bn.{suffix}") and f"{key[: -len(suffix)]}weight" in _TABLE


def convert_state_dict(state_dict: Mapping[str, Any]) -> Variables:
  """pytorch-fid state dict -> Flax variables {"params", "batch_stats"} of `InceptionV3`,
  float32 numpy (`table`). Conv weights (out, in, kh, kw) become (kh, kw, in, out); `fc.weight`
  is transposed.

  Raises:
    ValueError: a missing, unexpected or mis-shaped key, naming the key and both shapes; a
      non-float tensor or NaN / infinite values, naming the key.
  """
  return torch_convert.from_torch(state_dict, _TABLE, WHAT, _is_optional)


def load_weights(source: str | os.PathLike | Mapping[str, Any]) -> Variables:
  """Flax variables from `pt_inception-2015-12-05-6726825d.pth` (or an `.npz` of the same keys,
  or a name -> array mapping). Nothing is downloaded: see the module docstring for the URL.

  Raises:
    FileNotFoundError: no file at `source`.
    ValueError: unreadable file, or a missing, unexpected or mis-shaped key.
  """
  return torch_convert.load(source, _TABLE, WHAT, _is_optional)
