"""FID and Inception Score of in-memory samples against a reference batch, with the project's
Inception (the ADM evaluator's network, `rar_jax.evaluation.inception`): what a training run
computes on its own samples. The reference `.npz` holds `mu`/`sigma` (pool_3 statistics, as
ADM's VIRTUAL_imagenet256_labeled.npz) or `arr_0` images to compute them from.
"""

from __future__ import annotations

import os

import numpy as np

from rar_jax.evaluation import fid, inception


def check_files(weights: str, reference: str) -> None:
  """FileNotFoundError naming the config key of the first missing file (cheap; call first)."""
  for key, path in (("eval.inception_weights", weights), ("eval.fid_reference", reference)):
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"{key}={path!r}: file not found")


def reference_stats(path: str, extractor: inception.FeatureExtractor) -> tuple[np.ndarray, ...]:
  """(mu [D], sigma [D, D]) of the reference; ValueError naming the file when D is not the
  Inception pool size."""
  with fid.named_npz_errors(path), np.load(path, allow_pickle=False) as npz:
    stats = (npz["mu"], npz["sigma"]) if {"mu", "sigma"} <= set(npz.files) else None
  if stats is None:
    stats = fid.activation_stats(fid.compute_activations(path, extractor).pool)
  mu, sigma = stats
  d = inception.POOL_DIM
  if mu.shape != (d,) or sigma.shape != (d, d):
    raise ValueError(
      f"eval.fid_reference={path}: statistics of shape mu {mu.shape}, sigma {sigma.shape}; "
      f"the Inception pool features are {d}"
    )
  return mu, sigma


class InceptionFID:
  """Callable: uint8 images [N, H, W, 3] -> {"fid", "inception_score"}."""

  def __init__(self, weights: str, reference: str, batch_size: int = 256):
    check_files(weights, reference)
    # The cheap check before the network.
    with fid.named_npz_errors(reference), np.load(reference, allow_pickle=False) as npz:
      if {"mu", "sigma"} <= set(npz.files):
        reference_stats_shape = npz["mu"].shape
        if reference_stats_shape != (inception.POOL_DIM,):
          raise ValueError(
            f"eval.fid_reference={reference}: mu has shape {reference_stats_shape}; the "
            f"Inception pool features are {inception.POOL_DIM}"
          )
    self.extractor = inception.FeatureExtractor.from_file(weights, batch_size=batch_size)
    self.reference = reference_stats(reference, self.extractor)

  def __call__(self, images: np.ndarray) -> dict[str, float]:
    feats = self.extractor(images)
    return {
      "fid": fid.frechet_distance(*fid.activation_stats(feats.pool), *self.reference),
      "inception_score": fid.inception_score(feats.logits, from_logits=True),
    }
