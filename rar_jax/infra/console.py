"""What the command-line jobs print: their own progress lines, plus warnings and errors.

Third-party INFO logging (Orbax's per-save details, absl, CLU's metric echo, TensorFlow's
native start-up messages) is off unless `--verbosity` is given on the command line
(`--verbosity=0` shows INFO, `1` DEBUG). The jobs' own lines go through `info`, which prints
whatever the verbosity, from process 0 only; TensorBoard keeps every metric either way.
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
