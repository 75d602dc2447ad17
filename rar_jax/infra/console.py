"""What the command-line jobs print: their own progress lines, plus warnings and errors.

Third-party INFO logging (Orbax's per-save details, absl, CLU's metric echo, TensorFlow's
native start-up messages) is off unless `--verbosity` is given on the command line
(`--verbosity=0` shows INFO, `1` DEBUG); so are Orbax's error reports from its threads, whose
errors the job reports itself in one line (shown again with --verbosity or RAR_TRACEBACK=1).
The jobs' own lines go through `info`, which prints whatever the verbosity, from process 0
only; TensorBoard keeps every metric either way.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

_LOGGER = logging.getLogger("rar_jax.infra.console")


def _verbosity_given() -> bool:
  return "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present > 0


class _OrbaxErrorFilter(logging.Filter):
  """Drops Orbax's ERROR records (each with a traceback, several per failed save, logged from
  its background threads): every one of those failures also reaches the job as an exception
  (at the next save or wait), which the command reports in one line (`infra/user_errors.py`)."""

  def filter(self, record: logging.LogRecord) -> bool:
    path = record.pathname.replace(os.sep, "/")
    return not (record.levelno >= logging.ERROR and "/orbax/" in path)


_ORBAX_ERRORS = _OrbaxErrorFilter()


def setup() -> None:
  """Call first in an absl `main` (flags parsed): quiets third-party INFO unless --verbosity."""
  if not _LOGGER.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    _LOGGER.addHandler(handler)
    _LOGGER.setLevel(logging.INFO)
    _LOGGER.propagate = False  # printed once, not again by absl's root handler
  if _verbosity_given():
    return
  if os.environ.get("RAR_TRACEBACK", "0") in ("", "0"):
    logging.getLogger("absl").addFilter(_ORBAX_ERRORS)
  # TensorFlow (TensorBoard files, TFDS) prints native INFO lines on import; it runs no model
  # compute here, so its oneDNN kernels (whose notice is one of those lines) are not needed.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  absl_logging.set_verbosity(absl_logging.WARNING)


def info(message: str, *args: object) -> None:
  """One line on the console from process 0 (`message % args`), whatever the verbosity.

  Call it after `distributed.initialize` (it asks JAX for the process index).
  """
  import jax  # noqa: PLC0415 - the console setup itself must not start JAX

  if jax.process_index() == 0:
    _LOGGER.info(message, *args)
