"""The workdir lease: a second process on a leased directory fails at once naming the holder;
a killed holder frees a local lease at once and an object-store lease once it expires; a
training job and a sample job hold it, so a second job on their folder is refused."""

import json
import pathlib
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import tests
from rar_jax.infra import workdir_lease
from tests.helpers import train_worker

ROOT = tests.ROOT

# python -c HOLDER DIR MODE TTL: takes the lease, prints HELD, then idles until killed.
HOLDER = """
import sys, time
from rar_jax.infra import workdir_lease
ttl = float(sys.argv[3])
workdir_lease.WorkdirLease(
  sys.argv[1], "test holder", mode=sys.argv[2], ttl_s=ttl, heartbeat_s=ttl / 5, settle_s=0.05
).acquire()
print("HELD", flush=True)
time.sleep(600)
"""

# python -c TRAINER WORKDIR DATA_DIR: the tiny training job, idling long after checkpoint 3.
TRAINER = """
import sys
from rar_jax.training import train
from tests.helpers import train_worker
train_worker.pause_after_checkpoint(3, seconds=300)
train.train_and_evaluate(train_worker.tiny_config(sys.argv[2], 1000), sys.argv[1])
"""


def _start(script: str, *args: str) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-c", script, *args],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for(proc: subprocess.Popen, prefix: str, timeout_s: float = 240) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    ready, _, _ = select.select([proc.stdout], [], [], 0.1)
    if ready:
      line = proc.stdout.readline()
      if line.startswith(prefix):
        return
      if not line and proc.poll() is not None:
        break
  proc.kill()
  raise AssertionError(f"never printed {prefix!r}: {proc.communicate()[1][-3000:]}")


def _kill(proc: subprocess.Popen) -> None:
  proc.send_signal(signal.SIGKILL)
  proc.communicate()


def _holder_pattern(pid: int) -> str:
  return rf"in use by .* on host {socket.gethostname()}, pid {pid}, since \d{{4}}-"


def test_local_lease_names_its_holder_and_dies_with_it(tmp_path):
  holder = _start(HOLDER, str(tmp_path), "local", "60")
  try:
    _wait_for(holder, "HELD")
    with pytest.raises(workdir_lease.LeaseHeldError, match=_holder_pattern(holder.pid)):
      workdir_lease.WorkdirLease(tmp_path).acquire()
  finally:
    _kill(holder)  # no cleanup runs: the kernel drops the lock
  with workdir_lease.WorkdirLease(tmp_path, "second") as lease:
    assert json.loads(lease.path.read_text())["purpose"] == "second"
  assert not (tmp_path / workdir_lease.LEASE_FILE).exists()


@pytest.mark.slow
def test_object_lease_heartbeats_and_expires_after_a_crash(tmp_path):
  ttl = 2.0
  holder = _start(HOLDER, str(tmp_path), "object", str(ttl))
  taker = workdir_lease.WorkdirLease(tmp_path, mode="object", settle_s=0.05)
  try:
    _wait_for(holder, "HELD")
    time.sleep(1.5 * ttl)  # past the first expiry: the heartbeat keeps it
    with pytest.raises(workdir_lease.LeaseHeldError, match=_holder_pattern(holder.pid)):
      taker.acquire()
  finally:
    _kill(holder)
  with pytest.raises(workdir_lease.LeaseHeldError):  # not expired yet
    taker.acquire()
  time.sleep(ttl)
  taker.acquire()  # the dead holder's lease expired: taken over
  assert json.loads(taker.path.read_text())["pid"] != holder.pid
  taker.release()
  assert not taker.path.exists()


def test_object_lease_taken_over_is_reported_lost(tmp_path):
  lease = workdir_lease.WorkdirLease(
    tmp_path, mode="object", ttl_s=1.0, heartbeat_s=0.05, settle_s=0.01
  ).acquire()
  lease.check()
  intruder = {"purpose": "other", "host": "h2", "pid": 1, "token": "x", "expires": time.time() + 60}
  lease.path.write_text(json.dumps(intruder))
  time.sleep(0.5)
  with pytest.raises(workdir_lease.LeaseLostError, match="taken over by other on host h2"):
    lease.check()
  lease.release()
  assert json.loads(lease.path.read_text())["token"] == "x"  # the new holder's lease stays


def test_job_lease_is_released_when_the_job_fails(tmp_path):
  with pytest.raises(ZeroDivisionError):
    with workdir_lease.hold(tmp_path, "training"):
      with pytest.raises(workdir_lease.LeaseHeldError):
        workdir_lease.WorkdirLease(tmp_path).acquire()
      _ = 1 / 0
  workdir_lease.WorkdirLease(tmp_path).acquire().release()


@pytest.mark.slow
def test_sample_job_refuses_an_output_folder_in_use(tmp_path):
  holder = _start(HOLDER, str(tmp_path), "local", "60")
  try:
    _wait_for(holder, "HELD")
    proc = subprocess.run(
      [sys.executable, "-m", "rar_jax.sampling.sample", "--export=no_such_export"]
      + [f"--output={tmp_path}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    _kill(holder)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {tmp_path} is in use by test holder on host "), proc.stderr
  assert f"pid {holder.pid}" in last and "Traceback" not in proc.stderr


def _snapshot(workdir: pathlib.Path) -> dict[str, tuple[int, int]]:
  return {
    str(p.relative_to(workdir)): (p.stat().st_size, p.stat().st_mtime_ns)
    for p in workdir.rglob("*")
    if p.is_file() and "events.out" not in p.name  # the first job's TensorBoard file grows
  }


@pytest.mark.slow
def test_second_training_job_on_a_workdir_is_refused_at_once(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  config_file = tmp_path / "tiny.py"  # the first job's config, valid for its data
  config_file.write_text(
    "from tests.helpers import train_worker\n\n\ndef get_config():\n"
    f"  return train_worker.tiny_config({data_dir!r}, 1000)\n"
  )
  workdir = tmp_path / "run"
  first = _start(TRAINER, str(workdir), data_dir)
  try:
    _wait_for(first, "PAUSED 3")
    before = _snapshot(workdir)
    config_json = (workdir / "config.json").read_bytes()
    start = time.monotonic()
    second = subprocess.run(
      [sys.executable, "-m", "rar_jax.main", f"--config={config_file}"]
      + [f"--workdir={workdir}", "--config.optim.lr=5e-4"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
    )
    elapsed = time.monotonic() - start
    assert first.poll() is None  # the first job still runs
    assert _snapshot(workdir) == before
  finally:
    _kill(first)
  assert second.returncode == 2, second.stderr[-3000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {workdir} is in use by training on host "), second.stderr
  assert f"pid {first.pid}, since " in last and "Traceback" not in second.stderr
  assert elapsed < 60  # refused before anything is prepared or compiled
  assert (workdir / "config.json").read_bytes() == config_json
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
