"""Offline crops used to pre-tokenize images, matching the official RAR / MAR data preparation.

- `center_crop_arr`: ADM's center crop (guided-diffusion): halve the image with a BOX filter
  while its short side is at least twice the target, resize the short side to the target with
  BICUBIC, then crop the center (offsets rounded down).
- `center_crop_flip`: that crop as is and horizontally flipped (2 records per image; the data of
  the paper's ablations).
- `ten_crop`: ADM crop to int(size * 1.1) (281 for 256), then torchvision `TenCrop(size)`: the
  five crops (top-left, top-right, bottom-left, bottom-right, center) of the image, then the
  same five of its horizontal flip (10 records per image; the data of the final models).

All functions take a PIL image or an array (uint8 [H, W, 3] or [H, W]) and return uint8
[N, size, size, 3]; the "none" augmentation passes already-sized images through unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

ImageLike = Image.Image | np.ndarray


def to_pil(image: ImageLike) -> Image.Image:
  """PIL image or uint8 array [H, W(, C)] -> RGB PIL image."""
  if isinstance(image, Image.Image):
    return image.convert("RGB")
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f"array images must be uint8, got {array.dtype}")
  return Image.fromarray(array).convert("RGB")


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
  """ADM center crop of a PIL image -> uint8 [image_size, image_size, C]."""
  while min(pil_image.size) >= 2 * image_size:
    half = tuple(side // 2 for side in pil_image.size)
    pil_image = pil_image.resize(half, resample=Image.Resampling.BOX)
  scale = image_size / min(pil_image.size)
  scaled = tuple(round(side * scale) for side in pil_image.size)
  array = np.asarray(pil_image.resize(scaled, resample=Image.Resampling.BICUBIC))
  top = (array.shape[0] - image_size) // 2
  left = (array.shape[1] - image_size) // 2
  return array[top : top + image_size, left : left + image_size]


def center_crop_flip(image: ImageLike, size: int) -> np.ndarray:
  """ADM center crop, as is and flipped left-right -> uint8 [2, size, size, 3]."""
  crop = center_crop_arr(to_pil(image), size)
  return np.stack([crop, crop[:, ::-1]])


def five_crop(array: np.ndarray, size: int) -> np.ndarray:
  """torchvision FiveCrop of [H, W, C]: tl, tr, bl, br, center -> [5, size, size, C]."""
  h, w = array.shape[:2]
  if h < size or w < size:
    raise ValueError(f"image {h}x{w} is smaller than the crop size {size}")
  # torchvision's center offset uses Python's round (half to even).
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
  return np.stack([array[y : y + size, x : x + size] for y, x in corners])


def ten_crop(image: ImageLike, size: int) -> np.ndarray:
  """ADM crop to int(size * 1.1), then TenCrop(size) -> uint8 [10, size, size, 3]."""
  array = center_crop_arr(to_pil(image), int(size * 1.1))  # [281, 281, 3] for size 256
  return np.concatenate([five_crop(array, size), five_crop(array[:, ::-1], size)])


def passthrough(image: Any, size: int) -> np.ndarray:
  """An image already at [size, size(, C)] (any dtype) -> [1, size, size(, C)]."""
  array = np.asarray(image)
  if array.shape[:2] != (size, size):
    raise ValueError(f"augmentation 'none' needs {size}x{size} images, got {array.shape}")
  return array[None]


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How many crops one source image gives, and the function (image, size) -> [N, ...]."""

  num_crops: int
  apply: Callable[[Any, int], np.ndarray]


AUGMENTATIONS: dict[str, Augmentation] = {
  "center_crop_flip": Augmentation(2, center_crop_flip),
  "ten_crop": Augmentation(10, ten_crop),
  "none": Augmentation(1, passthrough),
}


def get_augmentation(name: str) -> Augmentation:
  """Looks up AUGMENTATIONS; ValueError lists the known names."""
  if name not in AUGMENTATIONS:
    raise ValueError(f"unknown augmentation {name!r}; use one of {sorted(AUGMENTATIONS)}")
  return AUGMENTATIONS[name]
