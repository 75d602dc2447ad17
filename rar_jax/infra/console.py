"""What the command-line jobs print: their own progress lines, plus warnings and errors.

Third-party INFO logging (Orbax's per-save details, absl, CLU's metric echo, TensorFlow's
native start-up messages) is off unless `--verbosity` is given on the command line
(`--verbosity=0` shows INFO, `1` DEBUG); so are Orbax's error reports from its threads, whose
errors the job reports itself in one line (shown again with --verbosity or RAR_TRACEBACK=1).
The jobs' own lines go through `info`, which prints whatever the verbosity, from process 0
only; TensorBoard keeps every metric either way.
`Progress` is the jobs' one progress reporter: done of total, rate and time to go.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from absl import flags
from absl import logging as absl_logging

_LOGGER = logging.getLogger("rar_jax.infra.console")
T = TypeVar("T")


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


def format_duration(seconds: float) -> str:
  """42s, 3m05s, 2h07m, 3d04h."""
  s = max(0, round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
  return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class Progress:
  """How far a job is: `done` of `total` units, with the rate and the time to go measured
  between one report and the next.

  The training line (`rar_jax.training.progress_line`) calls `mark` and prints its own metrics;
  sampling and pre-tokenizing call `advance` (or loop over `iterate`), which prints

    <what> 120/500  3.52/s  ETA 1m48s

  through `info` (process 0) at most every `every_s` seconds, and when the last unit is done.
  """

  def __init__(
    self,
    total: int,
    what: str,
    done: int = 0,
    every_s: float = 30.0,
    clock: Callable[[], float] = time.perf_counter,
  ):
    self.total, self.what, self.done, self.every_s = total, what, done, every_s
    self._clock = clock
    self._last = (done, clock())  # (units done, time) at the previous report

  def mark(self, done: int) -> tuple[float, str]:
    """Records `done` units as done; returns (units per second since the previous report,
    the formatted time to go at that rate)."""
    now = self._clock()
    last_done, last_time = self._last
    self._last, self.done = (done, now), done
    seconds, units = now - last_time, done - last_done
    rate = units / seconds if seconds > 0 else 0.0
    return rate, format_duration(seconds / max(1, units) * (self.total - done))

  def advance(self, units: int = 1) -> str | None:
    """Adds `units` done; prints and returns the line when it is due, else None."""
    done = self.done + units
    if done < self.total and self._clock() - self._last[1] < self.every_s:
      self.done = done
      return None
    rate, eta = self.mark(done)
    line = f"{self.what} {done:>{len(str(self.total))}}/{self.total}  {rate:.3g}/s  ETA {eta}"
    info("%s", line)
    return line

  def iterate(self, items: Iterable[T]) -> Iterator[T]:
    """Yields the items, advancing by one after each has been handled."""
    for item in items:
      yield item
      self.advance()
