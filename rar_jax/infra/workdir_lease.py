"""An exclusive lease on a directory (a training workdir, a sample set's output folder), so that
no second job can write into a folder another job is using.

  with workdir_lease.hold(workdir, "training") as lease:
    ...  # a second process on the same workdir fails at once with LeaseHeldError

A second taker fails immediately with a one-line error naming the holder's host, pid and start
time (read from `<dir>/lease.json`). Two kinds of lease, chosen by the path:

- local (and NFS) paths: an OS lock, `fcntl.flock` on `<dir>/.lease.lock`, which the kernel
  drops when the holder exits, however it dies; `lease.json` only describes the holder.
- object stores (gs://, any path with a scheme): the lease *is* `lease.json`, holding an expiry
  time that a heartbeat thread pushes forward every `heartbeat_s`; a lease whose holder crashed
  expires after `ttl_s` and is then taken over. The store has no lock: the taker writes its own
  token, waits `settle_s`, and holds the lease only if it reads its token back. A holder whose
  heartbeat finds another token has lost the lease; `check()` then raises LeaseLostError.

Multi-process jobs hold one lease for the job, taken by process 0; `hold` tells every process
whether it was taken, so all of them stop when it was not.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from absl import logging
from etils import epath

from rar_jax.infra import atomic_files, user_errors

LOCK_FILE = ".lease.lock"  # local mode: the flock target
LEASE_FILE = "lease.json"  # who holds the lease (object mode: the lease itself)
MODES = ("auto", "local", "object")


class LeaseHeldError(user_errors.UserError):
  """Another process holds the lease (the message names its host, pid and start time)."""


class LeaseLostError(user_errors.UserError):
  """An object-store lease was taken over by another process while this one held it."""


def _now_iso() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _describe(holder: dict[str, Any] | None) -> str:
  """Who holds a lease, from its lease.json: 'training on host h, pid 12, since ...'."""
  if not holder:
    return "another process (its lease.json is not written yet)"
  text = f"{holder.get('purpose', 'a job')} on host {holder.get('host', '?')}, "
  text += f"pid {holder.get('pid', '?')}, since {holder.get('started', '?')}"
  if "heartbeat" in holder:
    text += f" (last heartbeat {holder['heartbeat']})"
  return text


class WorkdirLease:
  """An exclusive lease on one directory; `acquire` it, then `release` it (or use `with`)."""

  def __init__(
    self,
    directory: str | os.PathLike,
    purpose: str = "training",
    *,
    mode: str = "auto",
    ttl_s: float = 180.0,
    heartbeat_s: float = 30.0,
    settle_s: float = 2.0,
  ):
    """directory: the folder to lease (created if absent); purpose: what the holder does, for
    the error message; mode: "auto" (local for paths without a scheme, else object), "local"
    or "object"; ttl_s, heartbeat_s, settle_s: object mode's expiry, refresh interval and wait
    before the read-back."""
    if mode not in MODES:
      raise ValueError(f"lease mode must be one of {MODES}, got {mode!r}")
    if not 0 < heartbeat_s < ttl_s:
      raise ValueError(f"lease heartbeat_s={heartbeat_s} must be in (0, ttl_s={ttl_s})")
    self.directory = epath.Path(directory)
    if mode == "auto":
      mode = "object" if "://" in os.fspath(directory) else "local"
    self.mode, self.purpose = mode, purpose
    self.ttl_s, self.heartbeat_s, self.settle_s = ttl_s, heartbeat_s, settle_s
    self._token = uuid.uuid4().hex
    self._started = _now_iso()
    self._fd: int | None = None
    self._held = False
    self._lost: str | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  @property
  def path(self) -> epath.Path:
    """The lease.json describing the holder."""
    return self.directory / LEASE_FILE

  def _record(self) -> dict[str, Any]:
    record = {
      "purpose": self.purpose,
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": self._started,
      "token": self._token,
    }
    if self.mode == "object":
      now = time.time()
      record.update(heartbeat=_now_iso(), expires=now + self.ttl_s, ttl_s=self.ttl_s)
    return record

  def _write(self) -> None:
    atomic_files.write_text(self.path, json.dumps(self._record(), indent=2))

  def _read(self) -> dict[str, Any] | None:
    """lease.json, or None when absent; one that is not JSON reads as {} (no valid holder).
    A failed read raises: it must neither take a live holder's lease nor lose our own (the
    heartbeat retries it)."""
    if not self.path.exists():
      return None
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:  # removed since the check
      return None
    except ValueError:
      return {}

  def _held_error(self, holder: dict[str, Any] | None) -> LeaseHeldError:
    return LeaseHeldError(
      f"{self.directory} is in use by {_describe(holder)}: wait for it to finish, or use "
      "another directory"
    )

  def acquire(self) -> WorkdirLease:
    """Takes the lease, or raises LeaseHeldError at once naming the holder."""
    self.directory.mkdir(parents=True, exist_ok=True)
    if self.mode == "local":
      self._acquire_local()
    else:
      self._acquire_object()
    self._held = True
    return self

  def _acquire_local(self) -> None:
    fd = os.open(os.fspath(self.directory / LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      holder = None
      for _ in range(10):  # the holder may have just locked, its lease.json not yet written
        holder = self._read()
        if holder:
          break
        time.sleep(0.1)
      raise self._held_error(holder) from None
    self._fd = fd
    self._write()

  def _acquire_object(self) -> None:
    holder = self._read()
    if holder is not None and holder.get("expires", 0) > time.time():
      raise self._held_error(holder)
    if holder is not None:
      logging.warning("Taking over the expired lease %s of %s", self.path, _describe(holder))
    self._write()
    time.sleep(self.settle_s)  # another taker writing meanwhile wins; read back to see
    back = self._read()
    if not back or back.get("token") != self._token:
      raise self._held_error(back)
    self._thread = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
    self._thread.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        current = self._read()
        if not current or current.get("token") != self._token:
          self._lost = f"the lease {self.path} was taken over by {_describe(current)}"
          logging.error("%s", self._lost)
          return
        self._write()
      except Exception as err:  # noqa: BLE001 - a failed refresh is retried at the next beat
        logging.warning("Could not refresh the lease %s: %s", self.path, err)

  @property
  def lost(self) -> str | None:
    """Why the (object-store) lease was lost to another process, or None while it is ours."""
    return self._lost

  def check(self) -> None:
    """Raises LeaseLostError if another process took the (object-store) lease over."""
    if self._lost:
      raise LeaseLostError(self._lost)

  def release(self) -> None:
    """Gives the lease up (idempotent): removes lease.json and drops the lock."""
    if not self._held:
      return
    self._held = False
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with contextlib.suppress(OSError):
      if self.mode == "local" or (self._read() or {}).get("token") == self._token:
        self.path.unlink(missing_ok=True)
    if self._fd is not None:
      os.close(self._fd)  # drops the flock
      self._fd = None

  def __enter__(self) -> WorkdirLease:
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def _take_for_job(directory: str | os.PathLike, purpose: str, **kwargs) -> WorkdirLease | None:
  """Process 0 takes the lease; every process learns whether it did, and all raise if not.

  Returns the lease on process 0, None on the other processes.
  """
  import jax  # noqa: PLC0415 - the lease itself needs no JAX

  lease, error = None, None
  if jax.process_index() == 0:
    try:
      lease = WorkdirLease(directory, purpose, **kwargs).acquire()
    except Exception as err:  # noqa: BLE001 - re-raised below, after the others are told
      error = err
  if jax.process_count() > 1:
    import numpy as np  # noqa: PLC0415
    from jax.experimental import multihost_utils  # noqa: PLC0415

    taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not taken and error is None:
      raise LeaseHeldError(
        f"process 0 could not take the lease on {directory} (its log names the holder)"
      )
  if error is not None:
    raise error
  return lease


@contextlib.contextmanager
def hold(
  directory: str | os.PathLike, purpose: str, **kwargs: Any
) -> Iterator[WorkdirLease | None]:
  """Holds the job's lease on directory for the `with` block (taken by process 0).

  Yields the lease on process 0 and None elsewhere; it is released however the block ends.
  kwargs go to WorkdirLease (mode, ttl_s, heartbeat_s, settle_s).

  Raises:
    LeaseHeldError: another process holds it (on every process of this job).
  """
  lease = _take_for_job(directory, purpose, **kwargs)
  try:
    yield lease
  finally:
    if lease is not None:
      lease.release()


def hold_for_process(directory: str | os.PathLike, purpose: str, **kwargs: Any) -> None:
  """Like `hold`, for a command-line job: the lease is held until this process exits (an OS
  lock dies with the process; lease.json is removed at exit, or expires in object mode).

  Raises:
    LeaseHeldError: another process holds the lease (a one-line error in the commands).
  """
  lease = _take_for_job(directory, purpose, **kwargs)
  if lease is not None:
    atexit.register(lease.release)
