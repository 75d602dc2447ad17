"""Pixel tokenizer for tiny grey images (scikit-learn's 8x8 digits, grey levels 0..16): each
pixel's quantized grey level is one token, row-major. Same interface as `vqgan.Tokenizer`, so
nothing downstream needs to know which tokenizer made the codes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rar_jax.tokenizers.vqgan import as_array, check_float_images

Array = jax.Array


class PixelTokenizer:
  """Tokens are the grey levels round(value * (levels - 1)) of the pixels, row-major.

  encode: float images in [0, 1], [B, H, W] or [B, H, W, C] (mean over C; uint8 is rejected)
  -> int32 codes [B, H*W]. decode: codes [B, H*W] -> float32 [B, H, W, 3] in [0, 1], grey
  replicated to 3 channels.
  """

  def __init__(self, levels: int = 17, image_size: int = 8):
    if levels < 2:
      raise ValueError(f"levels must be >= 2, got {levels}")
    self.levels = levels
    self._image_size = image_size

  @property
  def name(self) -> str:
    return f"pixel-{self.levels}levels-{self.image_size}x{self.image_size}"

  @property
  def seq_len(self) -> int:
    return self.image_size**2

  @property
  def codebook_size(self) -> int:
    return self.levels

  @property
  def image_size(self) -> int:
    return self._image_size

  def encode(self, images: Any) -> Array:
    """float [B, H, W] or [B, H, W, C] in [0, 1] -> int32 codes [B, H*W]."""
    images = as_array(images)
    check_float_images(images, (3, 4))
    s = self.image_size
    if images.shape[1:3] != (s, s):
      raise ValueError(f"images must be [B, {s}, {s}(, C)], got {images.shape}")
    grey = jnp.asarray(images, jnp.float32)
    if grey.ndim == 4:
      grey = grey.mean(axis=-1)  # [B, H, W]
    codes = jnp.round(jnp.clip(grey, 0.0, 1.0) * (self.levels - 1)).astype(jnp.int32)
    return codes.reshape(codes.shape[0], -1)

  def decode(self, codes: Any) -> Array:
    """int codes [B, H*W] -> float32 images [B, H, W, 3] in [0, 1]."""
    codes = as_array(codes)
    if codes.ndim != 2 or codes.shape[1] != self.seq_len:
      raise ValueError(f"codes must be [B, {self.seq_len}], got {codes.shape}")
    s = self.image_size
    grey = jnp.asarray(codes, jnp.float32).reshape(-1, s, s, 1) / (self.levels - 1)
    return jnp.repeat(jnp.clip(grey, 0.0, 1.0), 3, axis=-1)
