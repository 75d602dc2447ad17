"""Command-line paths: local ones resolved against the current directory, URLs as given."""

import pathlib

from etils import epath

from rar_jax.infra import paths


def test_local_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.absolute("workdirs/digits") == str(tmp_path / "workdirs" / "digits")
  assert paths.absolute("./a/../b") == str(tmp_path / "b")
  assert paths.absolute(pathlib.Path("c")) == str(tmp_path / "c")
  assert paths.absolute("/abs/path") == "/abs/path"
  for url in ("gs://bucket/rar_xl", "s3://b/x/../y"):
    assert paths.absolute(url) == url and paths.is_url(url)
  assert paths.absolute(epath.Path("gs://bucket/e")) == "gs://bucket/e"
  assert not paths.is_url("workdirs/digits")
