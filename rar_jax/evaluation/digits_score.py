"""Quality score of generated digits: a classifier trained on scikit-learn's real 8x8 digits
labels each sample, and the score is how often that label is the class the sample was
conditioned on (per class and overall)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from sklearn import datasets, model_selection, svm

LEVELS = 16  # the real digits hold grey levels 0..16


@functools.cache
def _classifier() -> tuple[svm.SVC, float]:
  """An RBF SVM fitted on all real digits, and its 5-fold accuracy on real digits."""
  x, y = datasets.load_digits(return_X_y=True)
  make = lambda: svm.SVC(gamma=0.001, C=10.0)
  real_accuracy = float(model_selection.cross_val_score(make(), x, y, cv=5).mean())
  return make().fit(x, y), real_accuracy


def to_features(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 8, 8, 3] (grey) -> [N, 64] grey levels 0..16, the real data's scale."""
  grey = np.asarray(images, np.float32)[..., 0] / 255.0
  return np.round(grey * LEVELS).reshape(len(images), -1)


def score(images: np.ndarray, classes: np.ndarray, num_classes: int) -> dict[str, Any]:
  """{"accuracy", "per_class", "num_samples", "real_digits_accuracy"} of the samples.

  Args:
    images: uint8 [N, 8, 8, 3] samples.
    classes: int [N], the class each sample was conditioned on, in [0, num_classes).
    num_classes: the model's class count; per_class has exactly this many entries, entry c
      being the accuracy on the samples of class c (None when class c has no sample).

  Raises:
    ValueError: classes and images differ in length, or a class id is outside [0, num_classes).
  """
  classes = np.asarray(classes)
  if len(classes) != len(images):
    raise ValueError(f"{len(images)} images but {len(classes)} class ids")
  if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
    raise ValueError(
      f"class ids must be in [0, {num_classes}), got {classes.min()}..{classes.max()}"
    )
  clf, real_accuracy = _classifier()
  correct = clf.predict(to_features(images)) == classes
  per_class = [
    float(correct[classes == c].mean()) if (classes == c).any() else None
    for c in range(num_classes)
  ]
  return {
    "accuracy": float(correct.mean()),
    "per_class": per_class,
    "num_samples": int(len(images)),
    "real_digits_accuracy": real_accuracy,
  }
