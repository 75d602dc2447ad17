"""Paths given on a command line: relative local paths resolved once, URLs left alone.

Orbax refuses relative checkpoint paths ("Checkpoint path should be absolute"), and a path
that is recorded (a sample set's manifest, a sweep's run commands) must mean the same from any
directory, so every command resolves its local paths against the current directory where it
first uses them. gs:// (any scheme://) paths are absolute already and are returned as given.

  paths.absolute("workdirs/digits")    # "/home/me/rar_jax/workdirs/digits"
  paths.absolute("gs://bucket/rar_xl")  # "gs://bucket/rar_xl"
"""

from __future__ import annotations

import os


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` names an object store or other file system by scheme (gs://, s3://, ...)."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """`path` as an absolute path string: a local path joined to the current directory and
  normalized (`os.path.abspath`), a URL unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(path)
