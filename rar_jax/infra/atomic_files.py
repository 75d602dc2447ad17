"""Atomic file writes: write a temporary file next to the target, then rename it over the target.

A reader never sees a half-written file under the final name: the data goes to
`.<name>.<uuid4 hex>.tmp` in the target's directory, is flushed (and fsynced for local files),
and is then renamed over the target. If the write fails, the temporary file is removed and an
existing target is left untouched. Paths may be `str`, `os.PathLike` or `etils.epath.Path`, so
cloud paths (gs://, s3://) work too; there the final rename is only as atomic as the store's.

  with atomic_files.open_for_write(path) as f:
    np.savez(f, **arrays)
  atomic_files.write_text(path, json.dumps(meta, indent=2))
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from etils import epath

from rar_jax.infra import user_errors

PathLike = str | os.PathLike | epath.Path

_MODES = ("w", "wb")


def _temp_path(path: PathLike) -> epath.Path:
  """A fresh temporary path next to `path`: `<dir>/.<name>.<uuid4 hex>.tmp`."""
  path = epath.Path(path)
  return path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"


def _fsync(f: IO[Any]) -> None:
  """fsyncs `f` when it has an OS file descriptor (local files); cloud files have none."""
  try:
    fd = f.fileno()
  except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
    return
  os.fsync(fd)


@contextlib.contextmanager
def open_for_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
  """Opens a temporary file that replaces `path` when the `with` block ends without error.

  Args:
    path: the file to (over)write; its directory must exist.
    mode: "wb" (bytes) or "w" (UTF-8 text).

  Yields:
    A file object writing to a uniquely named temporary file in `path`'s directory. On normal
    exit it is flushed, fsynced where it has a real descriptor, closed and renamed over `path`
    (replacing an existing file, with `os.replace` semantics for local paths). On an exception
    the temporary file is removed, `path` is left as it was and the exception propagates.

  Raises:
    ValueError: `mode` is not "w" or "wb".
  """
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
  target = epath.Path(path)
  tmp = _temp_path(target)
  try:
    with tmp.open(mode) as f:
      yield f
      f.flush()
      _fsync(f)
    tmp.replace(target)
  except BaseException as err:
    with contextlib.suppress(OSError):  # keep the original error, not a cleanup one
      tmp.unlink(missing_ok=True)
    if isinstance(err, OSError) and err.errno in user_errors.DISK_FULL_ERRNOS:
      raise OSError(err.errno, err.strerror, os.fspath(target)) from err  # the file meant
    raise


def write_bytes(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically (see `open_for_write`)."""
  with open_for_write(path, "wb") as f:
    f.write(data)


def write_text(path: PathLike, text: str) -> None:
  """Writes `text` to `path` atomically as UTF-8 (see `open_for_write`)."""
  with open_for_write(path, "w") as f:
    f.write(text)
