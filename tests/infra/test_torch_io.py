"""Tests for rar_jax.infra.torch_io: torch-free, pickle-safe state dict reading, atomic writing."""

import collections
import os
import pickle
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from rar_jax.infra import torch_io

TORCH_REASON = "torch is an optional dependency (pip install rar_jax[torch])"


def test_torch_round_trip_dtypes_and_shared_storage(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = collections.OrderedDict(
    f32=torch.randn(3, 5),
    f16=torch.randn(7).half(),
    bf16=torch.tensor([1.5, -2.25, 3e10], dtype=torch.bfloat16),
    i64=torch.arange(-3, 9).reshape(3, 4),
    scalar=torch.tensor(7, dtype=torch.int32),
    boolean=torch.tensor([True, False, True]),
    empty=torch.zeros(0, 3),
    rows=base[1:3],  # shares base's storage at offset 6
    column=base[:, 2],  # same storage, offset 2, stride 6
    transposed=base.t(),  # non-contiguous strides
    param=torch.nn.Parameter(torch.ones(2, 2)),
  )
  path = tmp_path / "model.bin"
  torch.save(state, path)

  loaded = torch_io.load_state_dict(path)
  assert list(loaded) == list(state)
  for k, t in state.items():
    want = (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy()
    assert loaded[k].dtype == want.dtype, k
    np.testing.assert_array_equal(loaded[k], want, err_msg=k)
  assert loaded["bf16"].dtype == np.float32
  assert not np.shares_memory(loaded["rows"], loaded["column"])  # copied out of the storage


def test_save_state_dict_torch_format_is_official(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  state = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3).T,  # non-contiguous
    "b": np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16),
    "n": np.array(5, dtype=np.int64),
  }
  path = tmp_path / "out.pt"
  torch_io.save_state_dict(state, path)
  with_torch = torch.load(path, weights_only=True)
  assert with_torch["b"].dtype == torch.bfloat16
  np.testing.assert_array_equal(with_torch["w"].numpy(), state["w"])
  loaded = torch_io.load_state_dict(path)
  np.testing.assert_array_equal(loaded["b"], np.array([1.0, 2.0], np.float32))
  np.testing.assert_array_equal(loaded["n"], state["n"])
  assert os.listdir(tmp_path) == ["out.pt"]


def _torch_like_zip(path, pickle_bytes):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle_bytes)
    z.writestr("archive/version", "3\n")


def test_malicious_pickle_does_not_run(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"echo pwned > {marker}",))

  path = tmp_path / "evil.bin"
  _torch_like_zip(path, pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"evil\.bin.*(posix|os|nt)\.system"):
    torch_io.load_state_dict(path)
  assert not marker.exists()


def test_forbidden_builtin_and_non_tensor_values(tmp_path):
  path = tmp_path / "eval.pt"
  _torch_like_zip(path, pickle.dumps({"w": print}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"eval\.pt.*builtin\w*\.print"):
    torch_io.load_state_dict(path)
  nested = tmp_path / "nested.pt"
  _torch_like_zip(nested, pickle.dumps({"state_dict": {}, "epoch": 3}, protocol=2))
  with pytest.raises(ValueError, match=r"nested\.pt.*'state_dict' is a dict, not a tensor"):
    torch_io.load_state_dict(nested)


def test_out_of_bounds_tensor_geometry_is_refused():
  storage = np.zeros(4, np.float32)
  with pytest.raises(pickle.UnpicklingError, match="exceeds storage"):
    torch_io._rebuild_tensor_v2(storage, 2, (3,), (1,), False, None)
  with pytest.raises(pickle.UnpicklingError, match="bad tensor geometry"):
    torch_io._rebuild_tensor_v2(storage, 0, (2,), (-1,), False, None)
  assert torch_io._rebuild_tensor_v2(
    storage, 1, (2, 2), (0, 1), False, None
  ).materialize().shape == (2, 2)


def test_load_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.bin"):
    torch_io.load_state_dict(tmp_path / "missing.bin")
  legacy = tmp_path / "legacy.bin"
  legacy.write_bytes(torch_io._LEGACY_MAGIC + b".rest of a legacy file")
  with pytest.raises(ValueError, match=r"legacy\.bin.*re-save"):
    torch_io.load_state_dict(legacy)
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match=r"garbage\.pth"):
    torch_io.load_state_dict(garbage)
  no_pkl = tmp_path / "nopkl.bin"
  with zipfile.ZipFile(no_pkl, "w") as z:
    z.writestr("archive/version", "3\n")
  with pytest.raises(ValueError, match=r"nopkl\.bin.*data\.pkl"):
    torch_io.load_state_dict(no_pkl)


def test_truncated_torch_zip_is_value_error(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  path = tmp_path / "full.bin"
  torch.save({"w": torch.randn(64, 64)}, path)
  cut = tmp_path / "cut.bin"
  cut.write_bytes(path.read_bytes()[:-200])  # loses the zip central directory
  with pytest.raises(ValueError, match=r"cut\.bin"):
    torch_io.load_state_dict(cut)


def test_legacy_torch_file_is_refused(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  path = tmp_path / "old.pt"
  torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
  with pytest.raises(ValueError, match=r"old\.pt.*legacy.*re-save"):
    torch_io.load_state_dict(path)


def test_npz_round_trip_and_overwrite(tmp_path):
  state = {"a.weight": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}
  state["b"] = np.arange(5, dtype=np.int32)
  path = tmp_path / "params.npz"
  torch_io.save_state_dict(state, path)
  loaded = torch_io.load_state_dict(path)
  assert loaded.keys() == state.keys()
  for k in state:
    assert loaded[k].dtype == state[k].dtype
    np.testing.assert_array_equal(loaded[k], state[k])

  with pytest.raises(FileExistsError, match=r"params\.npz"):
    torch_io.save_state_dict({"b": np.zeros(1)}, path)
  np.testing.assert_array_equal(torch_io.load_state_dict(path)["b"], state["b"])
  torch_io.save_state_dict({"b": np.zeros(1)}, path, overwrite=True)
  assert list(torch_io.load_state_dict(path)) == ["b"]
  assert os.listdir(tmp_path) == ["params.npz"]


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
  path = tmp_path / "params.npz"
  with pytest.raises(TypeError, match="'bad'"):
    torch_io.save_state_dict({"ok": np.ones(2), "bad": {"not": "an array"}}, path)
  assert os.listdir(tmp_path) == []

  def failing_savez(f, **arrays):
    f.write(b"PK partial bytes")
    raise OSError("disk full")

  monkeypatch.setattr(np, "savez", failing_savez)
  with pytest.raises(OSError, match="disk full"):
    torch_io.save_state_dict({"ok": np.ones(2)}, path)
  assert os.listdir(tmp_path) == []
  path.write_bytes(b"original")
  with pytest.raises(OSError, match="disk full"):
    torch_io.save_state_dict({"ok": np.ones(2)}, path, overwrite=True)
  assert os.listdir(tmp_path) == ["params.npz"]
  assert path.read_bytes() == b"original"


def test_save_torch_without_torch_raises_import_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match=r"rar_jax\[torch\]"):
    torch_io.save_state_dict({"w": np.ones(2)}, tmp_path / "w.bin")
  assert os.listdir(tmp_path) == []


def test_stride_zero_expanded_tensor_is_refused_without_allocating(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  path = tmp_path / "bomb.bin"
  # 1 stored float viewed as 40,000 x 40,000: 6.4 GB if copied out, a 1.6 KB file.
  torch.save({"ok": torch.ones(3), "bomb": torch.zeros(1).expand(40_000, 40_000)}, path)
  assert path.stat().st_size < 2_000
  with pytest.raises(ValueError, match=r"bomb\.bin: tensor 'bomb' of shape \(40000, 40000\)"):
    torch_io.load_state_dict(path)


def test_many_views_of_one_storage_are_capped(tmp_path):
  torch = pytest.importorskip("torch", reason=TORCH_REASON)
  base = torch.zeros(1 << 19)  # 2 MiB, each view within it: no single tensor is expanded
  path = tmp_path / "views.bin"
  torch.save({f"v{i}": base for i in range(8)}, path)
  with pytest.raises(ValueError, match=r"views\.bin: tensor 'v4' brings the tensors to"):
    torch_io.load_state_dict(path)
  # Tied weights (a few tensors sharing one storage) and small broadcasts still load.
  torch.save({"a": base, "b": base, "c": torch.ones(1).expand(1000)}, path)
  loaded = torch_io.load_state_dict(path)
  assert loaded["b"].shape == (1 << 19,) and loaded["c"].tolist() == [1.0] * 1000
