"""From class ids to images: the one path used by sample sets (`rar_jax.sampling.sample`) and by
the training previews. Sample tokens on the mesh, gather them on every host, decode them with
the tokenizer and convert to uint8 as the official sampler does; and lay images out in grids.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from PIL import Image

from rar_jax import sharding
from rar_jax.sampling import decoding


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] -> uint8 as the official sampler: clamp, x255, truncate."""
  return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


def sample_images(
  sampler: decoding.Sampler,
  mesh: Mesh,
  params: Any,
  class_ids: np.ndarray,
  key: jax.Array,
  decode: Callable[[np.ndarray], np.ndarray],
  rows: slice | None = None,
) -> np.ndarray:
  """uint8 [len(class_ids[rows]), H, W, 3]: samples of class_ids (int [N]) decoded to images.

  The batch is padded to a multiple of the data-parallel size and the local device count (so
  any N works; a fixed N compiles once), sampled over the mesh, and the tokens are gathered on
  every host. `rows` (default: all) picks the rows this host decodes, e.g.
  slice(host, None, hosts) to split the decoding over hosts; `decode` maps tokens int [n, L]
  to float images [n, H, W, 3] in [0, 1] (a tokenizer's `decode`).
  """
  n = len(class_ids)
  multiple = max(sharding.data_parallel_size(mesh), jax.local_device_count())
  padded = np.resize(np.asarray(class_ids, np.int32), -(-n // multiple) * multiple)
  tokens = decoding.sample_on_mesh(sampler, mesh, params, padded, key)
  tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))[:n]
  return to_uint8(decode(tokens if rows is None else tokens[rows]))


def image_grid(images: np.ndarray, columns: int, min_cell: int = 64, gap: int = 2) -> np.ndarray:
  """[N, H, W, 3] uint8 -> one grid image with `columns` cells a row, each enlarged (nearest)
  to at least min_cell pixels wide and framed by `gap` grey pixels; N must be a multiple of
  columns."""
  n, h, w, c = images.shape
  scale = max(1, -(-min_cell // w))
  cells = images.repeat(scale, axis=1).repeat(scale, axis=2)
  cells = np.pad(cells, ((0, 0), (gap, 0), (gap, 0), (0, 0)), constant_values=128)
  hh, ww = cells.shape[1:3]
  rows = n // columns
  grid = cells.reshape(rows, columns, hh, ww, c).transpose(0, 2, 1, 3, 4)
  grid = grid.reshape(rows * hh, columns * ww, c)
  return np.pad(grid, ((0, gap), (0, gap), (0, 0)), constant_values=128)


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] -> PNG file contents."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()
