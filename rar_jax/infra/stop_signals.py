"""SIGTERM and SIGINT (ctrl-C) for the long-running commands: a stop that saves what can be
saved, and an exit that never waits on a stuck start-up.

  with stop_signals.StopSignals(cleanup=lease.release) as signals:
    ...                        # start-up: a signal ends the job at once (nothing to save yet)
    signals.save_first(kept)   # the state exists: a signal now only asks the loop to stop
    ...
    if signals.requested:      # the loop checkpoints its step, then stops
      ...

Two phases:

- **exit at once** (from the start): nothing is lost by stopping, because nothing exists yet
  that is not on disk (the state is not built, or every file written is complete, as the
  sampler's chunks). The first signal raises `Interrupted` in the main thread; it unwinds (`with`
  blocks release the lease) and the command prints one line. A main thread stuck outside Python
  (an XLA compile or allocation, a futex wait) never runs Python's handler, so a watcher thread,
  woken by the signal through `signal.set_wakeup_fd`, waits `grace_s` and then runs the cleanups,
  prints the line and ends the process itself.
- **save first** (`save_first`): the first signal only sets `requested`; the caller checkpoints
  the current step and stops. A second signal aborts at once: the cleanups, one line naming what
  is kept, `os._exit(128 + signum)`. An asynchronous save cut short this way is never used: Orbax
  commits a step by renaming its temporary folder (cleaned up at the next start), and a step
  without its checksum manifest is only restored after a warning (`infra/checkpointing.py`).

Exit statuses: SIGTERM (a preemption notice) exits 0 once the job has stopped cleanly; SIGINT
exits 130, as a shell expects of ctrl-C; an abort (a second signal, or a start-up stuck past
`grace_s`) exits 128 + the signal number (130 or 143).

With several processes, JAX's preemption notifier owns SIGTERM (the hosts agree on a stop step;
see training/train.py); only SIGINT is handled here, and it always exits at once (the hosts
cannot agree on a step to save).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

EXIT_AT_ONCE, SAVE_FIRST = "exit at once", "save first"
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT"}
_SENTINEL = b"\0"  # wakes the watcher to stop; signal numbers are never 0


def exit_status(signum: int) -> int:
  """The status of a job that stopped cleanly after signum: 0 for SIGTERM, 130 for SIGINT."""
  return 0 if signum == signal.SIGTERM else 128 + signum


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not caught as Exception
  """The job stopped after SIGTERM or SIGINT; `str()` is the one line to print, `status` the exit
  status. A BaseException, so that `except Exception` blocks (e.g. a restore's fallback) never
  swallow it."""

  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.status = status


class StopSignals:
  """The handlers of SIGTERM and SIGINT for one job (see the module docstring); a context
  manager that restores the previous handlers on exit. Outside the main thread it does
  nothing (signal handlers can only be installed there)."""

  def __init__(
    self,
    what: str = "the job",
    cleanup: Callable[[], None] | None = None,
    grace_s: float = 5.0,
    multi_process: bool = False,
  ):
    """what: the job, for the messages; cleanup: run before an exit this module forces (e.g.
    releasing the workdir lease; it must be idempotent); grace_s: how long a start-up
    signal waits for the main thread to unwind before the process ends itself; multi_process:
    leave SIGTERM to JAX's preemption notifier."""
    self.what = what
    self.grace_s = grace_s
    self.phase = EXIT_AT_ONCE
    self.requested: int | None = None  # the signal that asked a save-first job to stop
    self._cleanups: list[Callable[[], None]] = [cleanup] if cleanup else []
    self._kept: Callable[[], str] = lambda: ""
    self._multi_process = multi_process
    self._at_once = f"during start-up, before {what} had anything to save"  # for the message
    self._signals = (signal.SIGINT,) if multi_process else (signal.SIGTERM, signal.SIGINT)
    self._previous: dict[int, Any] = {}
    self._previous_fd: int | None = None
    self._pipe: tuple[int, int] | None = None
    self._watcher: threading.Thread | None = None
    self._lock = threading.Lock()
    self._received = 0  # signals seen by the watcher
    self._saving = False  # the main thread took a save-first request
    self._aborting = False
    self._closed = False  # the `with` block ended: the stop line is printed by the command

  # -- set-up ----------------------------------------------------------------------------------

  def __enter__(self) -> StopSignals:
    if threading.current_thread() is not threading.main_thread():
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._pipe = (read_fd, write_fd)
    self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in self._signals:
      self._previous[signum] = signal.signal(signum, self._handle)
    self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
    self._watcher.start()
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def close(self) -> None:
    """Restores the previous handlers and stops the watcher (idempotent)."""
    self._closed = True
    if self._pipe is None:
      return
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
    signal.set_wakeup_fd(self._previous_fd if self._previous_fd is not None else -1)
    read_fd, write_fd = self._pipe
    self._pipe = None
    os.write(write_fd, _SENTINEL)
    if self._watcher is not None:
      self._watcher.join(timeout=5)
    os.close(read_fd)
    os.close(write_fd)

  def add_cleanup(self, cleanup: Callable[[], None]) -> None:
    """Also runs `cleanup` (idempotent) before an exit this module forces."""
    self._cleanups.append(cleanup)

  def describe_kept(self, kept: Callable[[], str]) -> None:
    """kept() says what a stop or an abort keeps, e.g. "the checkpoint at step 300 is kept"
    (called when the message is printed, from any thread)."""
    self._kept = kept

  def save_first(self) -> None:
    """From now on a signal asks the job to save and stop (`requested`); with several processes
    SIGINT keeps ending the job at once (the hosts could not agree on a step to save)."""
    if self._multi_process:
      self._at_once = "with several processes, where ctrl-C does not save"
      return
    with self._lock:
      self.phase = SAVE_FIRST

  def stop_message(self, step: int, saved: str) -> str:
    """'Stopped at step N after SIGINT; <saved>' for the signal that was requested."""
    name = NAMES.get(self.requested, "SIGTERM")  # None: JAX's preemption notice (several hosts)
    return f"Stopped at step {step} after {name}; {saved}"

  def raise_if_interrupt(self, message: str) -> None:
    """After a save-first stop: raises Interrupted(message, 130) when SIGINT asked for it (the
    job ends with ctrl-C's status); after SIGTERM it returns (the job ends normally, 0)."""
    if self.requested is not None and exit_status(self.requested):
      raise Interrupted(message, exit_status(self.requested))

  # -- the main thread's handler ---------------------------------------------------------------

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    name = NAMES.get(signum, str(signum))
    with self._lock:
      phase, again = self.phase, self.requested is not None
      if phase == SAVE_FIRST and not again:
        self.requested, self._saving = signum, True
    if phase == EXIT_AT_ONCE:
      raise Interrupted(
        f"Stopped by {name} {self._at_once}{self._kept_suffix()}",
        exit_status(signum),
      )
    if not again:
      _say(f"{name} received: saving the current step, then stopping (again to abort at once)")

  # -- the watcher thread ----------------------------------------------------------------------

  def _watch(self) -> None:
    pipe = self._pipe
    if pipe is None:
      return
    while True:
      try:
        data = os.read(pipe[0], 64)
      except OSError:
        return
      for signum in data:
        if signum == 0:
          return
        if signum not in self._signals:
          continue  # another handler's signal (the wakeup fd sees them all)
        with self._lock:
          self._received += 1
          count, phase = self._received, self.phase
        if count >= 2:
          self._abort(signum, "a second signal")
        elif phase == EXIT_AT_ONCE:
          threading.Thread(target=self._deadline, args=(signum,), daemon=True).start()

  def _deadline(self, signum: int) -> None:
    """After a start-up signal: ends the process when the main thread has not within grace_s
    (it is stuck outside Python, or its unwinding is)."""
    end = time.monotonic() + self.grace_s
    while time.monotonic() < end:
      time.sleep(0.05)
      with self._lock:
        if self._saving or self._closed:  # the loop saves, or the job has unwound
          return
    if self._closed:  # the main thread unwound out of the job: it handles the stop itself
      return
    self._abort(signum, f"start-up did not stop within {self.grace_s:g}s")

  def _kept_suffix(self) -> str:
    try:
      kept = self._kept()
    except Exception:  # noqa: BLE001 - a message detail must not stop the exit
      kept = ""
    return f"; {kept}" if kept else ""

  def _abort(self, signum: int, why: str) -> None:
    """Cleanups, one line, os._exit(128 + signum): the forced exit (any thread)."""
    with self._lock:
      if self._aborting:
        return
      self._aborting = True
    for cleanup in self._cleanups:
      try:
        cleanup()
      except Exception:  # noqa: BLE001, S110 - exiting anyway; the lock dies with the process
        pass
    name = NAMES.get(signum, str(signum))
    _say(f"Aborted by {name} ({why}): {self.what} ended at once{self._kept_suffix()}")
    os._exit(128 + signum)


def _say(line: str) -> None:
  """One line on stderr, safe from a signal handler or any thread."""
  try:
    os.write(sys.stderr.fileno(), (line + "\n").encode())
  except (OSError, ValueError):
    pass
