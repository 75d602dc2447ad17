"""Sample previews of a training run: a grid of fixed classes written to TensorBoard every N
steps, and at the end of training a PNG grid of every class with an optional quality score."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from PIL import Image

from rar_jax import atomic_files, sharding, tokenizers
from rar_jax.model.presets import ModelConfig
from rar_jax.sampling import decoding

SCORE_FILE = "sample_score.json"
GRID_FILE = "samples.png"


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] -> uint8 as the official sampler: clamp, x255, truncate."""
  return (np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255).astype(np.uint8)


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


def sampling_config(config: ml_collections.ConfigDict) -> decoding.SamplingConfig:
  """The SamplingConfig of a config's `sampling` group."""
  s = config.sampling
  return decoding.SamplingConfig(
    guidance_scale=s.guidance_scale,
    guidance_power=s.guidance_power,
    temperature=s.temperature,
    top_k=s.top_k,
    top_p=s.top_p,
  )


class Previews:
  """Draws samples with the run's sampling settings and decodes them with its tokenizer."""

  def __init__(self, config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh):
    self.config, self.cfg, self.mesh = config, cfg, mesh
    self.sampler = decoding.make_sampler(cfg, sampling_config(config))
    self.key = jax.random.fold_in(jax.random.key(config.seed), 0x5A)
    self.tokenizer = None
    e = config.eval  # sample_eval.enabled: the run scores fid_samples samples
    scores = e.fid_samples and (e.fid_features == "digits" or e.inception_weights)
    if e.grid_every or e.samples_per_class or scores:
      try:
        self.tokenizer = tokenizers.build(config.tokenizer, config.image_size)
      except FileNotFoundError as err:
        if jax.process_count() > 1:  # hosts must agree, or the collective sampling would hang
          raise
        logging.warning("Sample previews are off: %s", err)

  def images(self, params: Any, class_ids: np.ndarray, seed: int) -> np.ndarray:
    """uint8 [N, H, W, 3] samples of the given classes (padded to the data-parallel size)."""
    n = len(class_ids)
    multiple = max(sharding.data_parallel_size(self.mesh), jax.local_device_count())
    padded = np.resize(class_ids, -(-n // multiple) * multiple).astype(np.int32)
    key = jax.random.fold_in(self.key, seed)
    tokens = decoding.sample_on_mesh(self.sampler, self.mesh, params, padded, key)
    tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
    return to_uint8(self.tokenizer.decode(tokens))[:n]

  def maybe_write_grid(self, step: int, params: Any, writer: metric_writers.MetricWriter) -> None:
    """Writes the TensorBoard grid of eval.grid_classes every eval.grid_every steps."""
    every = self.config.eval.grid_every
    if not every or step % every or self.tokenizer is None:
      return
    classes = np.asarray(self.config.eval.grid_classes) % self.cfg.num_classes
    images = self.images(params, classes, step)
    writer.write_images(step, {"samples": image_grid(images, len(classes))[None]})

  def final_report(self, params: Any, workdir: str) -> dict[str, Any] | None:
    """samples_per_class of every class -> <workdir>/samples.png (a row per class), and the
    score named by eval.score -> <workdir>/sample_score.json. Returns the score."""
    per_class = self.config.eval.samples_per_class
    if not per_class or self.tokenizer is None:
      return None
    classes = np.repeat(np.arange(self.cfg.num_classes), per_class)
    images = self.images(params, classes, seed=1 << 30)
    grid = image_grid(images, per_class)
    if jax.process_index() == 0:
      with atomic_files.open_for_write(os.path.join(workdir, GRID_FILE)) as f:
        Image.fromarray(grid).save(f, format="PNG")
    if not self.config.eval.score:
      return None
    result = score(self.config.eval.score, images, classes)
    if jax.process_index() == 0:
      atomic_files.write_text(os.path.join(workdir, SCORE_FILE), json.dumps(result, indent=2))
    return result


def score(name: str, images: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
  """Quality score of samples by their conditioning classes."""
  if name != "digits":
    raise ValueError(f"unknown eval.score {name!r}; the only scorer is 'digits'")
  from rar_jax.evaluation import (
    digits_score,  # noqa: PLC0415 - scikit-learn only when scoring digits
  )

  return digits_score.score(images, classes)
