"""The shared table converter behind the three PyTorch imports (RAR, VQGAN, Inception)."""

import numpy as np
import pytest

from rar_jax.infra import torch_convert
from rar_jax.infra.torch_convert import Tensor

TABLE = {
  "conv.weight": torch_convert.conv((4, 3, 2, 5), ("params", "conv", "kernel")),
  "fc.weight": Tensor((6, 4), ("params", "fc", "kernel"), torch_convert.transpose, np.transpose),
  "bn.running_mean": Tensor((4,), ("batch_stats", "bn", "mean")),
}


def _state():
  rng = np.random.default_rng(0)
  return {key: rng.standard_normal(t.shape).astype(np.float32) for key, t in TABLE.items()}


def test_from_torch_places_and_transforms_and_to_torch_inverts():
  state = _state()
  tree = torch_convert.from_torch(
    {**state, "bn.step": np.array(3)}, TABLE, "w", lambda k: k == "bn.step"
  )
  assert tree["params"]["conv"]["kernel"].shape == (2, 5, 3, 4)  # (kh, kw, in, out)
  np.testing.assert_array_equal(tree["params"]["fc"]["kernel"], state["fc.weight"].T)
  np.testing.assert_array_equal(tree["batch_stats"]["bn"]["mean"], state["bn.running_mean"])
  back = torch_convert.to_torch(tree, TABLE)
  assert back.keys() == state.keys()
  for key, value in state.items():
    np.testing.assert_array_equal(back[key], value)
    assert back[key].flags.c_contiguous and back[key].dtype == np.float32
  assert torch_convert.names(TABLE)["params"]["conv"]["kernel"] == "conv.weight"


def test_from_torch_refuses_bad_keys_and_values_naming_them():
  state = _state()
  with pytest.raises(ValueError, match=r"w has unexpected key 'bn.step'"):
    torch_convert.from_torch({**state, "bn.step": np.array(3)}, TABLE, "w")
  with pytest.raises(ValueError, match=r"w key 'fc.weight' has dtype int64, not a float"):
    torch_convert.from_torch({**state, "fc.weight": np.ones((6, 4), np.int64)}, TABLE, "w")
  nan = np.full((4,), np.nan, np.float32)
  with pytest.raises(ValueError, match=r"w key 'bn.running_mean' has 4 of 4 values NaN"):
    torch_convert.from_torch({**state, "bn.running_mean": nan}, TABLE, "w")


def test_load_reads_a_path(tmp_path):
  state = _state()
  np.savez(tmp_path / "w.npz", **state)
  tree = torch_convert.load(tmp_path / "w.npz", TABLE, "w")
  np.testing.assert_array_equal(tree["batch_stats"]["bn"]["mean"], state["bn.running_mean"])
