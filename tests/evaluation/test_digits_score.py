"""digits_score: per-class accuracies line up with class ids, whatever the class count."""

import numpy as np
import pytest
from sklearn import datasets

from rar_jax.evaluation import digits_score


def _real_digits(labels: list[int]) -> np.ndarray:
  """uint8 [N, 8, 8, 3] real digits of the given labels, in the samples' format."""
  x, y = datasets.load_digits(return_X_y=True)
  rows = [np.flatnonzero(y == label)[i] for i, label in enumerate(labels)]
  grey = np.round(x[rows] / digits_score.LEVELS * 255).astype(np.uint8).reshape(-1, 8, 8)
  return np.repeat(grey[..., None], 3, axis=-1)


def test_per_class_is_indexed_by_class_id_with_gaps():
  # Classes 1 and 3 have no sample; class 2 is conditioned on but shows digit 7 (wrong).
  labels = [0, 0, 2, 2, 7, 7]
  classes = np.array([0, 0, 2, 2, 4, 4])
  images = _real_digits([0, 0, 2, 2, 7, 7])
  images[2:4] = _real_digits([7, 7])
  result = digits_score.score(images, classes, num_classes=5)
  assert len(result["per_class"]) == 5
  assert result["per_class"][1] is None and result["per_class"][3] is None
  assert result["per_class"][0] == 1.0 and result["per_class"][2] == 0.0
  assert result["per_class"][4] == 0.0  # digit 7 shown for class 4
  assert result["accuracy"] == pytest.approx(2 / 6)
  assert result["num_samples"] == len(labels)


def test_more_classes_than_ten_and_bad_ids():
  images = _real_digits([3, 3])
  result = digits_score.score(images, np.array([3, 11]), num_classes=12)
  assert len(result["per_class"]) == 12 and result["per_class"][3] == 1.0
  assert result["per_class"][11] == 0.0
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 10\)"):
    digits_score.score(images, np.array([3, 10]), num_classes=10)
  with pytest.raises(ValueError, match="2 images but 1 class ids"):
    digits_score.score(images, np.array([3]), num_classes=10)
