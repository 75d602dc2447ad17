"""MaskGIT-VQGAN image tokenizer (the one RAR trains on) in Flax Linen, its weight import from
the official PyTorch state_dict, and a data-parallel `Tokenizer` wrapper.

Layout is NHWC throughout; images are float32 in [0, 1]. Shapes: B batch, H/W image size, h/w
latent size (H / 2**(levels-1)), Z latent channels, K codebook size.

Faithful to the official port (open-muse / 1d-tokenizer `maskgit_vqgan.py`), including its
quirk: when a ResBlock changes width, the 1x1 `nin_shortcut` is applied to the block's own
output and added to it (`h + nin(h)`); the block input is then dropped. Inference only (the
official dropout is 0).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.infra import torch_convert

Array = jax.Array
GN_GROUPS = 32
GN_EPS = 1e-6
WHAT = "MaskGIT-VQGAN state dict"  # how the errors name the weights


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Sizes of the tokenizer; the defaults are the released `maskgit-vqgan-imagenet-f16-256`."""

  hidden_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  z_channels: int = 256
  codebook_size: int = 1024
  resolution: int = 256
  # Precision of convs and the codebook distances; "highest" keeps float32 on TPU/GPU too.
  precision: str = "highest"

  @property
  def num_levels(self) -> int:
    return len(self.channel_mult)

  @property
  def downsample_factor(self) -> int:
    return 2 ** (self.num_levels - 1)

  @property
  def latent_size(self) -> int:
    """Side of the token grid (16 for the released model)."""
    return self.resolution // self.downsample_factor

  @property
  def seq_len(self) -> int:
    return self.latent_size**2

  def width(self, level: int) -> int:
    return self.hidden_channels * self.channel_mult[level]


def _conv(cfg: VQGANConfig, features: int, k: int, name: str, bias: bool = True) -> nn.Conv:
  # Flax 'SAME' pads (k-1)//2 before and the rest after: TF-style SAME for stride 1.
  return nn.Conv(
    features, (k, k), padding="SAME", use_bias=bias, precision=cfg.precision, name=name
  )


def _norm(name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=GN_GROUPS, epsilon=GN_EPS, use_fast_variance=False, name=name)


class ResBlock(nn.Module):
  """GN -> SiLU -> conv3x3 -> GN -> SiLU -> conv3x3 (no biases), plus the MaskGIT shortcut."""

  cfg: VQGANConfig
  features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = _conv(self.cfg, self.features, 3, "conv1", bias=False)(nn.silu(_norm("norm1")(x)))
    h = _conv(self.cfg, self.features, 3, "conv2", bias=False)(nn.silu(_norm("norm2")(h)))
    if x.shape[-1] != self.features:
      return h + _conv(self.cfg, self.features, 1, "nin_shortcut", bias=False)(h)
    return x + h


class EncoderLevel(nn.Module):
  """`num_res_blocks` ResBlocks at one width, then a 2x2 average pool unless it is the last."""

  cfg: VQGANConfig
  level: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    for j in range(self.cfg.num_res_blocks):
      x = ResBlock(self.cfg, self.cfg.width(self.level), name=f"block_{j}")(x)
    if self.level != self.cfg.num_levels - 1:
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    return x


class DecoderLevel(nn.Module):
  """`num_res_blocks` ResBlocks, then (except level 0) nearest x2 upsampling and a conv3x3."""

  cfg: VQGANConfig
  level: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = self.cfg.width(self.level)
    for j in range(self.cfg.num_res_blocks):
      x = ResBlock(self.cfg, width, name=f"block_{j}")(x)
    if self.level != 0:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = _conv(self.cfg, width, 3, "upsample_conv")(x)
    return x


class Encoder(nn.Module):
  """[B, H, W, 3] in [0, 1] -> pre-quantization latents [B, h, w, Z]."""

  cfg: VQGANConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    x = _conv(cfg, cfg.hidden_channels, 3, "conv_in", bias=False)(x)
    for i in range(cfg.num_levels):
      x = EncoderLevel(cfg, i, name=f"down_{i}")(x)
    for j in range(cfg.num_res_blocks):
      x = ResBlock(cfg, cfg.width(-1), name=f"mid_{j}")(x)
    x = nn.silu(_norm("norm_out")(x))
    return _conv(cfg, cfg.z_channels, 1, "conv_out")(x)


class Decoder(nn.Module):
  """Quantized latents [B, h, w, Z] -> unclamped images [B, H, W, 3]."""

  cfg: VQGANConfig

  @nn.compact
  def __call__(self, z: Array) -> Array:
    cfg = self.cfg
    x = _conv(cfg, cfg.width(-1), 3, "conv_in")(z)
    for j in range(cfg.num_res_blocks):
      x = ResBlock(cfg, cfg.width(-1), name=f"mid_{j}")(x)
    for i in reversed(range(cfg.num_levels)):
      x = DecoderLevel(cfg, i, name=f"up_{i}")(x)
    x = nn.silu(_norm("norm_out")(x))
    return _conv(cfg, 3, 3, "conv_out")(x)


class VectorQuantizer(nn.Module):
  """Codebook [K, Z]; `__call__` picks the nearest code by L2, `lookup` embeds codes."""

  cfg: VQGANConfig

  def setup(self):
    k = self.cfg.codebook_size
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -1.0 / k, 1.0 / k)
    self.embedding = self.param("embedding", init, (k, self.cfg.z_channels))

  def __call__(self, z: Array) -> Array:
    """[B, h, w, Z] -> codes [B, h*w] int32, row-major over (h, w)."""
    flat = z.reshape(z.shape[0], -1, z.shape[-1])  # [B, h*w, Z]
    dots = jnp.einsum("bnz,kz->bnk", flat, self.embedding, precision=self.cfg.precision)
    dist = (
      jnp.sum(flat**2, axis=-1, keepdims=True) + jnp.sum(self.embedding**2, axis=-1) - 2.0 * dots
    )  # [B, h*w, K]
    return jnp.argmin(dist, axis=-1).astype(jnp.int32)

  def lookup(self, codes: Array) -> Array:
    """[B, h*w] -> [B, h, w, Z]."""
    s = self.cfg.latent_size
    return self.embedding[codes].reshape(codes.shape[0], s, s, self.cfg.z_channels)


class VQGAN(nn.Module):
  """Encoder + quantizer + decoder. Methods for `apply(..., method=...)`: `encode_latent`,
  `encode`, `decode_raw`, `decode`; `__call__` (used by `init`) returns (codes, raw decode)."""

  cfg: VQGANConfig

  def setup(self):
    self.encoder = Encoder(self.cfg)
    self.quantize = VectorQuantizer(self.cfg)
    self.decoder = Decoder(self.cfg)

  def encode_latent(self, images: Array) -> Array:
    """[B, H, W, 3] in [0, 1] -> encoder output before quantization [B, h, w, Z]."""
    return self.encoder(images.astype(jnp.float32))

  def encode(self, images: Array) -> Array:
    """[B, H, W, 3] in [0, 1] -> codes [B, h*w] int32."""
    return self.quantize(self.encode_latent(images))

  def decode_raw(self, codes: Array) -> Array:
    """codes [B, h*w] -> decoder output [B, H, W, 3] before clamping."""
    return self.decoder(self.quantize.lookup(codes))

  def decode(self, codes: Array) -> Array:
    """codes [B, h*w] -> images [B, H, W, 3] clamped to [0, 1]."""
    return jnp.clip(self.decode_raw(codes), 0.0, 1.0)

  def __call__(self, images: Array) -> tuple[Array, Array]:
    codes = self.encode(images)
    return codes, self.decode_raw(codes)


def init_params(cfg: VQGANConfig, rng: Array) -> dict[str, Any]:
  """Random parameters (official codebook init, Flax default conv init)."""
  images = jnp.zeros((1, cfg.resolution, cfg.resolution, 3), jnp.float32)
  return VQGAN(cfg).init(rng, images)["params"]


# ---------------------------------------------------------------------------------------------
# Official state_dict import.


def _resblock_shapes(prefix: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
  shapes = {
    f"{prefix}.norm1.weight": (cin,),
    f"{prefix}.norm1.bias": (cin,),
    f"{prefix}.conv1.weight": (cout, cin, 3, 3),
    f"{prefix}.norm2.weight": (cout,),
    f"{prefix}.norm2.bias": (cout,),
    f"{prefix}.conv2.weight": (cout, cout, 3, 3),
  }
  if cin != cout:
    shapes[f"{prefix}.nin_shortcut.weight"] = (cout, cout, 1, 1)
  return shapes


def _stack_shapes(prefix: str, cin: int, cout: int, n: int) -> dict[str, tuple[int, ...]]:
  """`n` ResBlocks `{prefix}.{j}`, the first one cin -> cout."""
  shapes = {}
  for j in range(n):
    shapes.update(_resblock_shapes(f"{prefix}.{j}", cin if j == 0 else cout, cout))
  return shapes


def _official_shapes(cfg: VQGANConfig) -> dict[str, tuple[int, ...]]:
  """Every key of the official tokenizer state_dict with its torch shape."""
  top, z, n = cfg.width(-1), cfg.z_channels, cfg.num_res_blocks
  s: dict[str, tuple[int, ...]] = {"encoder.conv_in.weight": (cfg.hidden_channels, 3, 3, 3)}
  cin = cfg.hidden_channels
  for i in range(cfg.num_levels):
    s.update(_stack_shapes(f"encoder.down.{i}.block", cin, cfg.width(i), n))
    cin = cfg.width(i)
  s.update(_stack_shapes("encoder.mid", top, top, n))
  s.update({"encoder.norm_out.weight": (top,), "encoder.norm_out.bias": (top,)})
  s.update({"encoder.conv_out.weight": (z, top, 1, 1), "encoder.conv_out.bias": (z,)})
  s.update({"decoder.conv_in.weight": (top, z, 3, 3), "decoder.conv_in.bias": (top,)})
  s.update(_stack_shapes("decoder.mid", top, top, n))
  for i in range(cfg.num_levels):
    w = cfg.width(i)
    s.update(
      _stack_shapes(f"decoder.up.{i}.block", cfg.width(min(i + 1, cfg.num_levels - 1)), w, n)
    )
    if i != 0:
      s.update({f"decoder.up.{i}.upsample_conv.weight": (w, w, 3, 3)})
      s.update({f"decoder.up.{i}.upsample_conv.bias": (w,)})
  w0 = cfg.width(0)
  s.update({"decoder.norm_out.weight": (w0,), "decoder.norm_out.bias": (w0,)})
  s.update({"decoder.conv_out.weight": (3, w0, 3, 3), "decoder.conv_out.bias": (3,)})
  s["quantize.embedding.weight"] = (cfg.codebook_size, z)
  return s


def _flax_path(name: str) -> tuple[str, ...]:
  """'encoder.down.0.block.1.norm1.weight' -> ('encoder', 'down_0', 'block_1', 'norm1', 'scale')."""
  *mods, leaf = name.split(".")
  path: list[str] = []
  for part in mods:
    if part.isdigit():
      path[-1] = f"{path[-1]}_{part}"
    else:
      path.append(part)
  if path[-1] == "embedding":
    return tuple(path)
  if leaf == "weight":
    leaf = "scale" if path[-1].startswith("norm") else "kernel"
  return (*path, leaf)


def table(cfg: VQGANConfig) -> dict[str, torch_convert.Tensor]:
  """Every official tensor: key -> torch shape and its path in `VQGAN(cfg)`'s params (the
  module names follow the torch ones); conv weights (out, in, kh, kw) become (kh, kw, in, out),
  everything else is copied."""
  return {
    key: (torch_convert.conv if len(shape) == 4 else torch_convert.Tensor)(shape, _flax_path(key))
    for key, shape in _official_shapes(cfg).items()
  }


def official_shapes(cfg: VQGANConfig) -> dict[str, tuple[int, ...]]:
  """Every key of the official tokenizer state_dict with its torch shape."""
  return torch_convert.shapes(table(cfg))


def convert_official(state_dict: Mapping[str, np.ndarray], cfg: VQGANConfig) -> dict[str, Any]:
  """Official torch state_dict (`encoder.*`, `decoder.*`, `quantize.embedding.weight`) -> Flax
  params of `VQGAN(cfg)`, float32 numpy (`table`). Raises ValueError on a missing, unexpected or
  mis-shaped key, a non-float tensor or NaN / infinite values, naming the key."""
  return torch_convert.from_torch(state_dict, table(cfg), WHAT)


def load_official(
  source: str | os.PathLike | Mapping[str, np.ndarray], cfg: VQGANConfig
) -> dict[str, Any]:
  """Converted params from a state_dict mapping or a checkpoint path (`.bin`/`.pt`/`.npz`)."""
  return torch_convert.load(source, table(cfg), WHAT)


# ---------------------------------------------------------------------------------------------
# Data-parallel tokenizer.


def as_array(x: Any) -> Any:
  """Arrays (numpy or jax, possibly sharded) pass through; lists become numpy arrays."""
  return x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)


def check_float_images(images: Any, ndims: tuple[int, ...]) -> None:
  """Reject integer images (the tokenizers take float in [0, 1]) and wrong ranks."""
  if jnp.issubdtype(images.dtype, jnp.integer):
    raise ValueError(f"images must be float in [0, 1] (divide uint8 by 255), got {images.dtype}")
  if images.ndim not in ndims:
    raise ValueError(f"images must have rank in {ndims}, got shape {images.shape}")


def jit_decode(cfg: VQGANConfig, mesh: Mesh) -> Any:
  """The jitted decode(params, codes [B, seq_len] int32) -> images [B, H, W, 3]: parameters
  replicated, the batch sharded over the mesh's batch axes (`Tokenizer.decode` runs it; the TPU
  compile checks lower it on abstract inputs)."""
  batch, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  model = VQGAN(cfg)
  return jax.jit(
    lambda p, c: model.apply({"params": p}, c, method=VQGAN.decode),
    in_shardings=(replicated, batch),
    out_shardings=batch,
  )


class Tokenizer:
  """MaskGIT-VQGAN tokenizer: config + params, jitted `encode`/`decode` sharded over the batch.

  encode: float images [B, H, W, 3] in [0, 1] (NHWC; uint8 is rejected) -> int32 codes
  [B, seq_len], row-major. decode: codes [B, seq_len] -> float32 images [B, H, W, 3] in [0, 1].
  B must be divisible by the mesh's data-parallel size (data x fsdp).
  """

  def __init__(self, cfg: VQGANConfig, params: Any, mesh: Mesh | None = None):
    self.cfg = cfg
    # Default: every device on "data" ("fsdp" and "tensor" of size 1).
    self.mesh = sharding.make_mesh() if mesh is None else mesh
    if not set(sharding.BATCH_AXES) <= set(self.mesh.axis_names):
      raise ValueError(f"mesh axes {self.mesh.axis_names} must include {sharding.BATCH_AXES}")
    self.data_parallel = sharding.data_parallel_size(self.mesh)
    self.batch_sharding = batch = sharding.batch_sharding(self.mesh)
    replicated = sharding.replicated(self.mesh)
    self.params = jax.device_put(params, replicated)
    model = VQGAN(cfg)
    jit = lambda f: jax.jit(f, in_shardings=(replicated, batch), out_shardings=batch)
    self._encode = jit(lambda p, x: model.apply({"params": p}, x, method=VQGAN.encode))
    self._decode = jit_decode(cfg, self.mesh)

  @property
  def name(self) -> str:
    return f"maskgit-vqgan-f{self.cfg.downsample_factor}-{self.cfg.resolution}"

  @property
  def seq_len(self) -> int:
    return self.cfg.seq_len

  @property
  def codebook_size(self) -> int:
    return self.cfg.codebook_size

  @property
  def image_size(self) -> int:
    return self.cfg.resolution

  def _shard_batch(self, x: Any) -> Array:
    """Places x (host or device, any sharding) batch-sharded on the mesh."""
    if x.shape[0] % self.data_parallel:
      raise ValueError(
        f"batch size {x.shape[0]} is not divisible by the data-parallel device count "
        f"{self.data_parallel}"
      )
    return jax.device_put(x, self.batch_sharding)

  def encode(self, images: Any) -> Array:
    """float [B, H, W, 3] in [0, 1] -> int32 codes [B, seq_len]."""
    images = as_array(images)
    check_float_images(images, (4,))
    r = self.cfg.resolution
    if images.shape[1:] != (r, r, 3):
      raise ValueError(f"images must be [B, {r}, {r}, 3], got {images.shape}")
    return self._encode(self.params, self._shard_batch(images.astype(jnp.float32)))

  def decode(self, codes: Any) -> Array:
    """int codes [B, seq_len] -> float32 images [B, H, W, 3] in [0, 1]."""
    codes = as_array(codes)
    if codes.ndim != 2 or codes.shape[1] != self.seq_len:
      raise ValueError(f"codes must be [B, {self.seq_len}], got {codes.shape}")
    return self._decode(self.params, self._shard_batch(codes.astype(jnp.int32)))
