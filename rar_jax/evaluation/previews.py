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
from jax.sharding import Mesh

from rar_jax import tokenizers
from rar_jax.infra import atomic_files
from rar_jax.model.presets import ModelConfig
from rar_jax.sampling import decoding, images

SCORE_FILE = "sample_score.json"
GRID_FILE = "samples.png"


class Previews:
  """Draws samples with the run's sampling settings and decodes them with its tokenizer."""

  def __init__(self, config: ml_collections.ConfigDict, cfg: ModelConfig, mesh: Mesh):
    self.config, self.cfg, self.mesh = config, cfg, mesh
    self.sampler = decoding.make_sampler(cfg, decoding.SamplingConfig.from_group(config.sampling))
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

  def sample(self, params: Any, class_ids: np.ndarray, seed: int) -> np.ndarray:
    """uint8 [N, H, W, 3] samples of the given classes (padded to the data-parallel size)."""
    key = jax.random.fold_in(self.key, seed)
    return images.sample_images(
      self.sampler, self.mesh, params, class_ids, key, self.tokenizer.decode
    )

  def maybe_write_grid(self, step: int, params: Any, writer: metric_writers.MetricWriter) -> None:
    """Writes the TensorBoard grid of eval.grid_classes every eval.grid_every steps."""
    every = self.config.eval.grid_every
    if not every or step % every or self.tokenizer is None:
      return
    classes = np.asarray(self.config.eval.grid_classes) % self.cfg.num_classes
    grid = images.image_grid(self.sample(params, classes, step), len(classes))
    writer.write_images(step, {"samples": grid[None]})

  def final_report(self, params: Any, workdir: str) -> dict[str, Any] | None:
    """samples_per_class of every class -> <workdir>/samples.png (a row per class), and the
    score named by eval.score -> <workdir>/sample_score.json. Returns the score."""
    per_class = self.config.eval.samples_per_class
    if not per_class or self.tokenizer is None:
      return None
    classes = np.repeat(np.arange(self.cfg.num_classes), per_class)
    samples = self.sample(params, classes, seed=1 << 30)
    grid = images.image_grid(samples, per_class)
    if jax.process_index() == 0:
      atomic_files.write_bytes(os.path.join(workdir, GRID_FILE), images.png_bytes(grid))
    if not self.config.eval.score:
      return None
    result = score(self.config.eval.score, samples, classes, self.cfg.num_classes)
    if jax.process_index() == 0:
      atomic_files.write_text(os.path.join(workdir, SCORE_FILE), json.dumps(result, indent=2))
    return result


def score(name: str, images: np.ndarray, classes: np.ndarray, num_classes: int) -> dict[str, Any]:
  """Quality score of samples by their conditioning classes."""
  if name != "digits":
    raise ValueError(f"unknown eval.score {name!r}; the only scorer is 'digits'")
  from rar_jax.evaluation import (
    digits_score,  # noqa: PLC0415 - scikit-learn only when scoring digits
  )

  return digits_score.score(images, classes, num_classes)
