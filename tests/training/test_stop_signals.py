"""SIGTERM and SIGINT at every stage of a training job (rar_jax/infra/stop_signals.py): during
start-up the job ends at once (nothing to save yet), also when its main thread is stuck outside
Python; once the state exists a signal checkpoints the current step first (SIGINT then exits
130), and a second signal aborts the save at once, leaving only complete checkpoints."""

import select
import signal
import subprocess
import sys
import time

import pytest

import tests
from rar_jax.infra import checkpointing, workdir_lease
from tests.helpers import train_worker

ROOT = tests.ROOT

# python -c SCRIPT MODE WORKDIR DATA_DIR [PAUSE HOLD]: the tiny job to 1000 steps, with a hook:
#   compile  prints COMPILING as its step starts compiling, then sleeps 2 s (in Python)
#   stuck    prints COMPILING, then blocks in a futex wait outside Python, as the hung job did
#   pause    pauses after checkpoint PAUSE (PAUSED), and holds the commit of checkpoint HOLD
#            for two minutes (FINALIZING): a save in flight
SCRIPT = """
import ctypes, sys, time
from rar_jax.infra import checkpointing, user_errors
from rar_jax.training import train
from tests.helpers import train_worker

mode, workdir, data_dir = sys.argv[1:4]
compile_step = train._compile_step

def hooked_compile(*args, **kwargs):
  print("COMPILING", flush=True)
  if mode == "stuck":
    mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER (glibc)
    lock = ctypes.CDLL(None).pthread_mutex_lock
    lock(mutex)
    lock(mutex)  # never returns: a futex wait with the GIL released
  time.sleep(2)
  return compile_step(*args, **kwargs)

if mode in ("compile", "stuck"):
  train._compile_step = hooked_compile
if mode == "pause":
  held = int(sys.argv[5])
  train_worker.pause_after_checkpoint(int(sys.argv[4]))
  finalize = checkpointing.Manager._finalize

  def slow_finalize(self, step, *args):
    if step == held:
      print(f"FINALIZING {step}", flush=True)
      time.sleep(120)
    return finalize(self, step, *args)

  checkpointing.Manager._finalize = slow_finalize
config = train_worker.tiny_config(data_dir, 1000)
state = user_errors.call(train.train_and_evaluate, config, workdir, True)
print(f"DONE {int(state.step)}", flush=True)
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_worker.write_random_dataset(str(tmp_path_factory.mktemp("data")))


def _start(*args: str) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-c", SCRIPT, *args],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for(proc: subprocess.Popen, prefix: str, timeout_s: float = 300) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if select.select([proc.stdout], [], [], 0.1)[0]:
      line = proc.stdout.readline()
      if line.startswith(prefix):
        return
      if not line and proc.poll() is not None:
        break
  proc.kill()
  raise AssertionError(f"never printed {prefix!r}: {proc.communicate()[1][-3000:]}")


def _finish(proc: subprocess.Popen, timeout_s: float = 120) -> tuple[int, str]:
  """(exit status, last stderr line); a job that does not end in timeout_s fails the test."""
  try:
    _, err = proc.communicate(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"the job did not stop: {proc.communicate()[1][-3000:]}") from None
  return proc.returncode, err.strip().splitlines()[-1]


def _steps(workdir) -> list[str]:
  return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def _lease_is_free(workdir) -> None:
  assert not (workdir / workdir_lease.LEASE_FILE).exists()
  workdir_lease.WorkdirLease(workdir).acquire().release()


@pytest.mark.slow
def test_sigterm_during_start_up_ends_the_job_at_once(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = _start("compile", str(workdir), data_dir)
  _wait_for(proc, "COMPILING")
  proc.send_signal(signal.SIGTERM)
  status, last = _finish(proc)
  assert status == 0, last
  assert last == (
    "Stopped by SIGTERM during start-up, before training had anything to save; no checkpoint "
    "was written"
  )
  assert _steps(workdir) == []  # the state never existed: nothing to save
  _lease_is_free(workdir)


@pytest.mark.slow
def test_a_start_up_stuck_outside_python_ends_within_the_grace_period(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = _start("stuck", str(workdir), data_dir)
  _wait_for(proc, "COMPILING")
  time.sleep(0.5)  # into the futex wait
  proc.send_signal(signal.SIGINT)
  status, last = _finish(proc)  # without the watcher it never ends
  assert status == 130, last
  assert last == (
    "Aborted by SIGINT (start-up did not stop within 5s): training ended at once; no checkpoint "
    "was written"
  )
  _lease_is_free(workdir)


@pytest.mark.slow
def test_sigint_saves_the_step_and_a_second_sigint_aborts_a_save_in_flight(tmp_path, data_dir):
  workdir = tmp_path / "run"
  proc = _start("pause", str(workdir), data_dir, "3", "4")  # holds checkpoint 4's commit
  _wait_for(proc, "PAUSED 3")
  proc.send_signal(signal.SIGINT)  # the loop saves step 4, whose commit is held
  _wait_for(proc, "FINALIZING 4")
  proc.send_signal(signal.SIGINT)
  status, last = _finish(proc)
  assert status == 130, last
  assert last == (
    "Aborted by SIGINT (a second signal): training ended at once; the checkpoint at step 3 is kept"
  )
  assert _steps(workdir) == ["3", "4.orbax-checkpoint-tmp"]  # 4 never committed
  _lease_is_free(workdir)

  proc = _start("pause", str(workdir), data_dir, "6", "0")  # resumes from 3
  _wait_for(proc, "PAUSED 6")
  proc.send_signal(signal.SIGINT)
  status, last = _finish(proc)
  assert status == 130, last
  assert last == "Stopped at step 7 after SIGINT; checkpoint written"
  assert _steps(workdir) == ["3", "6", "7"]  # the interrupted step is saved; the temporary gone
  config = train_worker.tiny_config(data_dir, 1000)
  manager = checkpointing.make_manager(str(workdir), config.checkpoint)
  assert checkpointing.committed_steps(manager.directory) == [3, 6, 7]
  _lease_is_free(workdir)
