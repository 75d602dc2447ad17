"""A "digits FID": the Fréchet distance between generated 8x8 digits and held-out real digits
in the feature space of a small classifier trained on the other real digits (the 64 ReLU
units of a one-hidden-layer MLP), the digits analogue of FID's Inception pool features.

The classifier is fitted on the data set's training records and the reference statistics are
those of its validation split, so neither the features nor the reference saw a held-out digit
during training. Both sets are compared at the same size by the caller (FID is biased by N).
"""

from __future__ import annotations

import numpy as np
from sklearn import neural_network

from rar_jax.evaluation import digits_score, fid

HIDDEN = 64  # feature size


class DigitsFID:
  """Callable: uint8 images [N, 8, 8, 3] -> Fréchet distance to the reference digits."""

  def __init__(
    self, train_images: np.ndarray, train_labels: np.ndarray, reference_images: np.ndarray
  ):
    """train_images / reference_images: uint8 [N, 8, 8, 3] grey; train_labels: int [N]."""
    x = digits_score.to_features(train_images) / digits_score.LEVELS  # [N, 64] in [0, 1]
    mlp = neural_network.MLPClassifier((HIDDEN,), max_iter=400, random_state=0)
    self.classifier = mlp.fit(x, np.asarray(train_labels))
    self.train_accuracy = float(self.classifier.score(x, train_labels))
    self.reference = fid.activation_stats(self.features(reference_images))

  def features(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 8, 8, 3] -> float64 [N, HIDDEN] hidden ReLU activations."""
    x = digits_score.to_features(images) / digits_score.LEVELS  # [N, 64]
    w, b = self.classifier.coefs_[0], self.classifier.intercepts_[0]
    return np.maximum(x @ w + b, 0.0)

  def __call__(self, images: np.ndarray) -> float:
    return fid.frechet_distance(*fid.activation_stats(self.features(images)), *self.reference)
