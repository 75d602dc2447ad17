"""Starting the commands, as `python -m rar_jax...` or as console scripts (setup.cfg).

absl's --help lists the key flags of the module named by sys.argv[0]. Run with `python -m`,
a command's flags are registered under that name; started as a console script (`rar-sample`),
they are registered under the module's import name instead, so `run` also declares them key
flags of sys.argv[0].

User errors (a bad flag or config value, an unknown config key, a config file that does not
load, a missing, existing or malformed file: `USER_ERRORS`; a full disk anywhere in an error's
chain; a `UserError` anywhere in it, e.g. a corrupt shard raised in a data-loading thread) print
one line, `error: <message>`, on stderr and exit with status 2; set RAR_TRACEBACK=1 (or give
--verbosity=1, debug) for the full traceback. Any other exception is a bug and keeps its
traceback. A job stopped by SIGTERM or SIGINT (`stop_signals.Interrupted`, or a bare ctrl-C)
prints its one line and exits with its status (0 after SIGTERM, 130 after SIGINT).
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from absl import app, flags

from rar_jax.infra import stop_signals

TRACEBACK_ENV = "RAR_TRACEBACK"
USER_ERROR_STATUS = 2


class UserError(RuntimeError):
  """A state of the user's files that only the user can resolve (a workdir in use, checkpoints
  that cannot be restored or written): reported in one line like a bad value."""


class DiskFullError(UserError):
  """No space left (or a quota reached) while writing: the message names the path and what was
  kept."""


# errno values of a full disk: ENOSPC, and EDQUOT (a quota) where the platform has it.
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e)
# The same as native libraries word it (tensorstore: "[os_error_code='28']").
_CODES = "|".join(str(e) for e in sorted(DISK_FULL_ERRNOS))
_DISK_FULL_TEXT = re.compile(
  rf"No space left on device|Disk quota exceeded|os_error_code='(?:{_CODES})'"
)


# Errors that describe the user's input; each names the bad key, value or file in one line.
USER_ERRORS: tuple[type[BaseException], ...] = (
  ValueError,
  pickle.UnpicklingError,
  FileNotFoundError,
  FileExistsError,
  IsADirectoryError,
  NotADirectoryError,
  PermissionError,
  flags.Error,
  app.UsageError,
  UserError,
)


def chain(error: BaseException) -> Iterator[BaseException]:
  """error, then its causes and contexts (each once)."""
  seen: set[int] = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def disk_full(error: BaseException) -> BaseException | None:
  """The error in error's chain that says the disk (or a quota) is full, or None: an OSError
  with errno ENOSPC or EDQUOT, or a native library's error saying so in its text."""
  for link in chain(error):
    if isinstance(link, OSError) and link.errno in DISK_FULL_ERRNOS:
      return link
    if _DISK_FULL_TEXT.search(str(link)):
      return link
  return None


def disk_full_cause(error: BaseException) -> str:
  """A short cause for a full disk: 'no space left on device' or 'disk quota exceeded'."""
  found = disk_full(error)
  quota = getattr(errno, "EDQUOT", None)
  if found is not None and (
    getattr(found, "errno", None) == quota or "quota" in str(found).lower()
  ):
    return "disk quota exceeded"
  return "no space left on device"


def wants_traceback(argv: Sequence[str] | None = None) -> bool:
  """True when RAR_TRACEBACK is set (not 0) or --verbosity is at least 1 (debug)."""
  if os.environ.get(TRACEBACK_ENV, "0") not in ("", "0"):
    return True
  for arg in sys.argv[1:] if argv is None else argv:
    found = re.fullmatch(r"--v(?:erbosity)?=(-?\d+|debug)", arg)
    if found and (found.group(1) == "debug" or int(found.group(1)) >= 1):
      return True
  return False


def _is_config_key_error(error: BaseException) -> bool:
  """A KeyError/AttributeError raised inside ml_collections: an unknown config key."""
  if not isinstance(error, KeyError | AttributeError):
    return False
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and "ml_collections" in frames[-1].filename


def _config_file_error(error: BaseException) -> str | None:
  """The message of an error raised while ml_collections loads a config file (a file that is not
  Python, raises, lacks get_config, or is missing), or None."""
  path = None
  for frame, _ in traceback.walk_tb(error.__traceback__):
    qualname = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    if qualname == "ConfigFileFlagParser.parse":
      path = frame.f_locals.get("path")
    elif qualname == "_ErrorConfig._ReportError":  # a missing file, reported at first access
      inner = frame.f_locals["self"]._error  # noqa: SLF001
      lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
      return f"cannot load the config file: {lines[-1] if lines else inner}"
  if path is None:
    return None
  return config_file_error(str(path).split(":", 1)[0], error)


def config_file_error(file: str, error: BaseException) -> str:
  """'cannot load the config file F (<cause>)' for an error raised while importing config file
  F or calling its get_config: not Python, an exception, no get_config."""
  if isinstance(error, SyntaxError):
    where = f", line {error.lineno}" if error.lineno else ""
    cause = f"not Python: SyntaxError: {error.msg}{where}"
  elif isinstance(error, AttributeError) and "get_config" in str(error):
    cause = "it defines no get_config(): a config is a Python file with one"
  else:
    cause = f"{type(error).__name__}: {error}".split("\n", 1)[0]
  return f"cannot load the config file {file} ({cause})"


def _interrupted(error: BaseException) -> stop_signals.Interrupted | None:
  """A stop by SIGTERM or SIGINT as an Interrupted (a bare KeyboardInterrupt included)."""
  if isinstance(error, stop_signals.Interrupted):
    return error
  if isinstance(error, KeyboardInterrupt):
    return stop_signals.Interrupted(
      "Stopped by SIGINT (ctrl-C)", stop_signals.exit_status(signal.SIGINT)
    )
  return None


def describe(error: BaseException, argv: Sequence[str] = ()) -> str | None:
  """The one-line message of a user error, or None when `error` is not one (a bug)."""
  loading = _config_file_error(error)
  if loading is not None:
    return loading
  if not isinstance(error, USER_ERRORS):
    for link in chain(error):  # e.g. raised in a data-loading thread, re-raised wrapped
      if isinstance(link, UserError):
        return describe(link, argv)
  if not isinstance(error, UserError) and disk_full(error) is not None:
    path = getattr(disk_full(error), "filename", None)
    where = f" writing {path}" if path else ""
    return f"{disk_full_cause(error)}{where}: free some space and rerun the same command"
  if _is_config_key_error(error):
    inner = error
    while inner.args and isinstance(inner.args[0], BaseException):  # AttributeError(KeyError)
      inner = inner.args[0]
    text = str(inner.args[0]) if inner.args else str(inner)  # "'key'" [+ "\nDid you mean ..."]
    key, _, hint = text.partition("\n")
    key = key.strip("\"'")
    given = [a for a in argv if a.startswith("--") and re.search(rf"\.{re.escape(key)}\b", a)]
    where = f" (in {given[0]})" if given else ""
    hint = f"; {hint.strip()}" if hint.strip() else ""
    return f"unknown config key {key!r}{where}{hint}"
  if not isinstance(error, USER_ERRORS):
    return None
  message = str(error).strip() or type(error).__name__
  if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
    message = f"{error.filename}: {message}"
  return " ".join(message.split())  # one line


def report(error: BaseException, argv: Sequence[str] = ()) -> None:
  """Prints a user error as one line and exits 2, a stop by a signal as its line with its status;
  re-raises anything else (or with a traceback wanted)."""
  stopped = _interrupted(error)
  if stopped is not None:
    print(str(stopped), file=sys.stderr, flush=True)
    sys.exit(stopped.status)
  message = describe(error, argv)
  if message is None or wants_traceback(argv):
    raise error
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_STATUS)


def call(fn: Callable[..., Any], *args: Any) -> Any:
  """fn(*args), with user errors reported as one line (`report`)."""
  try:
    return fn(*args)
  except (Exception, stop_signals.Interrupted, KeyboardInterrupt) as e:  # noqa: BLE001
    report(e, sys.argv[1:])  # re-raises everything but user errors and stops


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with bad flags and unknown config keys reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - re-raised but for user errors
    report(e, argv[1:])
    raise


def run(main: Callable[[list[str]], None], module: str) -> None:
  """app.run(main) for the command defined in `module` (pass `__name__`), user errors printed
  in one line (module docstring)."""
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(lambda argv: call(main, argv), flags_parser=_parse_flags)
