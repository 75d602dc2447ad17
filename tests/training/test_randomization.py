"""The randomness-annealing schedule and label dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rar_jax.training import randomization


@pytest.mark.parametrize(
  "step,expected",
  [
    (0, 1.0),
    (99, 1.0),
    (100, 1.0),
    (101, 0.99),
    (150, 0.5),
    (199, 0.01),
    (200, 0.0),
    (201, 0.0),
    (10_000, 0.0),
  ],
)
def test_randomness_ratio_at_and_around_both_ends(step, expected):
  assert float(randomization.randomness_ratio(step, 100, 200)) == pytest.approx(expected, abs=1e-6)


def test_randomness_ratio_official_recipe_and_degenerate_cases():
  r = lambda s: float(randomization.randomness_ratio(s, 125_000, 187_500))
  assert r(124_999) == 1.0 and r(125_000) == 1.0 and r(187_500) == 0.0
  assert r(156_250) == pytest.approx(0.5)
  # raster only (0, 0): r is 0 from the first update on; random only: end = start = total.
  assert float(randomization.randomness_ratio(0, 0, 0)) == 0.0
  assert float(randomization.randomness_ratio(50, 0, 0)) == 0.0
  assert float(randomization.randomness_ratio(249_999, 250_000, 250_000)) == 1.0


def test_anneal_steps_from_steps_or_fractions():
  assert randomization.anneal_steps(
    {"anneal_start_fraction": 0.5, "anneal_end_fraction": 0.75}, 1000
  ) == (500, 750)
  assert randomization.anneal_steps(
    {"anneal_start_steps": 125_000, "anneal_end_fraction": 0.75}, 250_000
  ) == (125_000, 187_500)
  # Steps, when set, win over the fraction (so either can be overridden on the command line).
  assert randomization.anneal_steps(
    {"anneal_start_steps": 10, "anneal_start_fraction": 0.5, "anneal_end_fraction": 0.75}, 100
  ) == (10, 75)
  with pytest.raises(ValueError, match=r"set randomness.anneal_end_fraction \(or"):
    randomization.anneal_steps({"anneal_start_steps": 1}, 10)
  with pytest.raises(ValueError, match=r"end \(100 steps\) is before its start \(200 steps\)"):
    randomization.anneal_steps({"anneal_start_steps": 200, "anneal_end_steps": 100}, 1000)
  with pytest.raises(ValueError, match="anneal_end_fraction must be in"):
    randomization.anneal_steps({"anneal_start_steps": 0, "anneal_end_fraction": 1.5}, 10)


def test_imagenet_config_anneals_at_the_official_steps():
  from configs import imagenet

  config = imagenet.get_config("L")
  assert randomization.anneal_steps(config.randomness, config.train.steps) == (125_000, 187_500)


def test_label_dropout():
  labels = jnp.arange(1000) % 10
  key = jax.random.key(2)
  np.testing.assert_array_equal(randomization.drop_labels(key, labels, 0.0, 10), labels)
  assert (randomization.drop_labels(key, labels, 1.0, 10) == 10).all()
  dropped = np.asarray(randomization.drop_labels(key, labels, 0.1, 10))
  assert abs((dropped == 10).mean() - 0.1) < 0.03
  kept = dropped != 10
  np.testing.assert_array_equal(dropped[kept], np.asarray(labels)[kept])
