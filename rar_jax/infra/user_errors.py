"""Starting the commands, as `python -m rar_jax...` or as console scripts (setup.cfg).

absl's --help lists the key flags of the module named by sys.argv[0]. Run with `python -m`,
a command's flags are registered under that name; started as a console script (`rar-sample`),
they are registered under the module's import name instead, so `run` also declares them key
flags of sys.argv[0].

User errors (a bad flag or config value, an unknown config key, a missing, existing or
malformed file: `USER_ERRORS`) print one line, `error: <message>`, on stderr and exit with
status 2; set RAR_TRACEBACK=1 (or give --verbosity=1, debug) for the full traceback. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

TRACEBACK_ENV = "RAR_TRACEBACK"
USER_ERROR_STATUS = 2


class UserError(RuntimeError):
  """A state of the user's files that only the user can resolve (a workdir in use, checkpoints
  that cannot be restored or written): reported in one line like a bad value."""


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
  UserError,
)


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


def describe(error: BaseException, argv: Sequence[str] = ()) -> str | None:
  """The one-line message of a user error, or None when `error` is not one (a bug)."""
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
  """Prints a user error as one line and exits 2; re-raises anything else (or with a traceback
  wanted)."""
  message = describe(error, argv)
  if message is None or wants_traceback(argv):
    raise error
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_STATUS)


def call(fn: Callable[..., Any], *args: Any) -> Any:
  """fn(*args), with user errors reported as one line (`report`)."""
  try:
    return fn(*args)
  except Exception as e:  # noqa: BLE001 - report() re-raises everything but user errors
    report(e, sys.argv[1:])


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with bad flags and unknown config keys reported in one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - report() re-raises everything but user errors
    report(e, argv[1:])
    raise


def run(main: Callable[[list[str]], None], module: str) -> None:
  """app.run(main) for the command defined in `module` (pass `__name__`), user errors printed
  in one line (module docstring)."""
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(lambda argv: call(main, argv), flags_parser=_parse_flags)
