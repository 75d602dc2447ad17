"""Sample quality of a training run: eval.fid_samples class-balanced samples (the run's
sampling config) scored at the end of training and every eval.fid_every steps, written to
TensorBoard (sample_fid, sample_inception_score) and appended to <workdir>/sample_quality.json.

eval.fid_features picks the feature space: "inception" (FID and IS against eval.fid_reference
with the Inception weights eval.inception_weights; on when the weights are named) or "digits"
(the digits FID of `rar_jax.evaluation.digits_fid` against the data set's validation split).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers
from etils import epath

from rar_jax import tokenizers
from rar_jax.data import holdout
from rar_jax.infra import atomic_files
from rar_jax.sampling import images

QUALITY_FILE = "sample_quality.json"
FEATURES = ("inception", "digits")
Scorer = Callable[[np.ndarray], dict[str, float]]  # uint8 images [N, H, W, 3] -> metrics


def enabled(eval_cfg: Mapping[str, Any]) -> bool:
  """Whether the run scores its samples (digits: always with fid_samples; inception: when
  the weights are named)."""
  if eval_cfg["fid_samples"] <= 0:
    return False
  return eval_cfg["fid_features"] == "digits" or bool(eval_cfg["inception_weights"])


def check_config(eval_cfg: Mapping[str, Any]) -> None:
  """Cheap checks of the eval group, before any data or compilation: ValueError naming a bad
  value, FileNotFoundError naming a missing weights or reference file."""
  for key in ("every_steps", "fid_every", "fid_samples"):
    if eval_cfg[key] < 0:
      raise ValueError(f"eval.{key} must be >= 0 (0 = off), got {eval_cfg[key]}")
  if eval_cfg["fid_features"] not in FEATURES:
    raise ValueError(f"eval.fid_features={eval_cfg['fid_features']!r} is not one of {FEATURES}")
  if enabled(eval_cfg) and eval_cfg["fid_features"] == "inception":
    from rar_jax.evaluation import inception_fid  # noqa: PLC0415 - imports the network

    inception_fid.check_files(eval_cfg["inception_weights"], eval_cfg["fid_reference"])


def _decoded(tokenizer: Any, tokens: np.ndarray) -> np.ndarray:
  return images.to_uint8(tokenizer.decode(tokens))


def build_scorer(config: ml_collections.ConfigDict, data_dir: str) -> Scorer:
  """The scorer of config.eval (loads weights and reference statistics, or fits the digits
  features); errors name the file or key."""
  e = config.eval
  if e.fid_features == "inception":
    from rar_jax.evaluation import inception_fid  # noqa: PLC0415 - imports the network

    batch = min(256, e.fid_samples)  # images per Inception call (padded up to it)
    return inception_fid.InceptionFID(e.inception_weights, e.fid_reference, batch)
  from rar_jax.evaluation import digits_fid  # noqa: PLC0415 - scikit-learn only for digits

  tokenizer = tokenizers.build(config.tokenizer, config.image_size)
  ref_tokens, _ = holdout.validation_arrays(data_dir)  # [N_ref, L]
  train = holdout.training_source(data_dir)
  rows = [train[i] for i in range(len(train))]
  train_tokens = np.stack([r["tokens"] for r in rows])  # [N_train, L]
  train_labels = np.asarray([r["label"] for r in rows]).reshape(-1)
  metric = digits_fid.DigitsFID(
    _decoded(tokenizer, train_tokens), train_labels, _decoded(tokenizer, ref_tokens)
  )
  return lambda pictures: {"fid": metric(pictures)}


class SampleEval:
  """Generates and scores the run's samples; `maybe_run` after every step."""

  def __init__(self, config: ml_collections.ConfigDict, scorer: Scorer, preview: Any):
    if preview.tokenizer is None:
      raise ValueError(
        f"eval.fid_samples={config.eval.fid_samples} needs the tokenizer to decode samples "
        f"(tokenizer.weights={config.tokenizer.get('weights')!r})"
      )
    self.config, self.scorer, self.preview = config, scorer, preview
    n, classes = config.eval.fid_samples, config.model.num_classes
    self.classes = np.arange(n) % (classes or 1)  # class-balanced: [N]

  def due(self, step: int, total_steps: int) -> bool:
    every = self.config.eval.fid_every
    return step == total_steps or bool(every and step % every == 0)

  def run(
    self, step: int, params: Any, writer: metric_writers.MetricWriter, workdir: str
  ) -> dict[str, Any]:
    """Samples, scores, logs sample_<metric> and appends the entry to QUALITY_FILE."""
    pictures = self.preview.sample(params, self.classes, seed=(1 << 29) + step)  # uint8 [N,H,W,3]
    metrics = self.scorer(pictures)
    writer.write_scalars(step, {f"sample_{k}": v for k, v in metrics.items()})
    entry = {
      "step": step,
      "features": self.config.eval.fid_features,
      "num_samples": len(pictures),
      **metrics,
    }
    if jax.process_index() == 0:
      path = epath.Path(workdir) / QUALITY_FILE
      history = []
      if path.exists():  # a resumed run redoes its step
        history = [h for h in json.loads(path.read_text()) if h["step"] != step]
      atomic_files.write_text(path, json.dumps([*history, entry], indent=2))
    return entry
