"""Tests for rar_jax.infra.atomic_files."""

import os

import pytest
from etils import epath

from rar_jax.infra import atomic_files


def test_open_for_write_creates_file(tmp_path):
  path = tmp_path / "out.bin"
  with atomic_files.open_for_write(path) as f:
    f.write(b"hello ")
    f.write(b"world")
    assert not path.exists()  # nothing under the final name until the block ends
    (tmp,) = os.listdir(tmp_path)
    assert tmp.startswith(".out.bin.") and tmp.endswith(".tmp")
  assert path.read_bytes() == b"hello world"
  assert os.listdir(tmp_path) == ["out.bin"]


def test_open_for_write_replaces_existing_file(tmp_path):
  path = tmp_path / "out.txt"
  path.write_text("old content that is longer than the new one")
  with atomic_files.open_for_write(str(path), "w") as f:
    f.write("new")
  assert path.read_text() == "new"
  assert os.listdir(tmp_path) == ["out.txt"]


def test_exception_keeps_old_content_and_removes_tmp(tmp_path):
  path = tmp_path / "out.bin"
  path.write_bytes(b"original")
  with pytest.raises(RuntimeError, match="boom"), atomic_files.open_for_write(path) as f:
    f.write(b"partial")
    raise RuntimeError("boom")
  assert path.read_bytes() == b"original"
  assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".*.tmp")) == []
  assert os.listdir(tmp_path) == ["out.bin"]


def test_exception_without_target_leaves_nothing(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with atomic_files.open_for_write(tmp_path / "new.bin") as f:
      f.write(b"partial")
      raise KeyboardInterrupt
  assert os.listdir(tmp_path) == []


def test_write_bytes_and_text(tmp_path):
  atomic_files.write_bytes(tmp_path / "a.bin", b"\x00\x01\xff")
  atomic_files.write_text(os.fspath(tmp_path / "b.json"), '{"caf\u00e9": 1}\n')
  assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01\xff"
  assert (tmp_path / "b.json").read_bytes() == '{"caf\u00e9": 1}\n'.encode()
  atomic_files.write_text(tmp_path / "b.json", "second")
  assert (tmp_path / "b.json").read_text() == "second"
  assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.json"]


def test_epath_argument(tmp_path):
  path = epath.Path(tmp_path) / "sub" / "out.npz"
  path.parent.mkdir()
  atomic_files.write_bytes(path, b"first")
  atomic_files.write_bytes(path, b"second")  # replaces, unlike epath's rename
  assert path.read_bytes() == b"second"
  with atomic_files.open_for_write(path, "w") as f:
    f.write("text")
  assert (tmp_path / "sub" / "out.npz").read_text() == "text"
  assert os.listdir(tmp_path / "sub") == ["out.npz"]


def test_missing_directory_raises_and_leaves_nothing(tmp_path):
  with pytest.raises(FileNotFoundError):
    atomic_files.write_bytes(tmp_path / "missing" / "out.bin", b"x")
  assert os.listdir(tmp_path) == []


def test_bad_mode(tmp_path):
  with pytest.raises(ValueError, match="mode"), atomic_files.open_for_write(tmp_path / "x", "a"):
    pass
  assert os.listdir(tmp_path) == []
