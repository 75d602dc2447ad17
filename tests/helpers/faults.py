"""Injected file-layer faults for subprocess tests, installed by a `python -c` prefix before a
command's entry function runs:

  python -c "from tests.helpers import faults; faults.disk_full('/out'); from m import cli; cli()"

`disk_full(prefix)` makes every Python-level open for writing of a path under prefix fail with
OSError(ENOSPC), as a full disk does (native writers, e.g. tensorstore's, are not affected).
"""

import builtins
import errno
import os

_open = builtins.open


def disk_full(prefix: str, spare: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> None:
  """Writes under prefix fail with ENOSPC, except files whose name starts with one of spare; with
  only, just files whose name starts with one of those."""
  prefix = os.path.abspath(prefix)

  def full_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
      path = os.path.abspath(os.fspath(file))
      name = os.path.basename(path)
      if path.startswith(prefix) and not name.startswith(spare) and name.startswith(only or ""):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return _open(file, mode, *args, **kwargs)

  builtins.open = full_open
