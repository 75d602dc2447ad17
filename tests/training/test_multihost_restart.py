"""Two processes (jax.distributed over gloo, 4 CPU devices each) train like one process fed
their joined batches, also across the multi-host restart path as JobSet runs it on GKE
(launch/xpk.sh --max-restarts): every process is killed after a checkpoint, a new set starts
with the same command and workdir, resumes from the newest checkpoint and ends where one
uninterrupted process ends; only process 0 prints the console lines."""

import select
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

import tests
from rar_jax import sharding
from rar_jax.data import pipeline
from rar_jax.training import optim, train, train_state, train_step
from tests.helpers import train_worker

ROOT = tests.ROOT
WORKER = ROOT / "tests" / "helpers" / "multiprocess_worker.py"
STEPS, PAUSE_AT = 6, 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, data_dir, pause_at=None) -> list[subprocess.Popen]:
  port = str(_free_port())
  extra = [] if pause_at is None else [str(pause_at)]
  return [
    subprocess.Popen(
      [sys.executable, str(WORKER), str(i), "2", port, str(workdir), data_dir, str(STEPS), *extra],
      cwd=ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _wait_for_pause(procs, timeout_s=400) -> None:
  waiting = {p.stdout: p for p in procs}
  for _ in range(timeout_s * 10):
    ready, _, _ = select.select(list(waiting), [], [], 0.1)
    for stream in ready:
      line = stream.readline()
      if line.startswith(f"PAUSED {PAUSE_AT}"):
        del waiting[stream]
      elif not line and waiting[stream].poll() is not None:
        raise AssertionError(f"a worker exited early: {waiting[stream].stderr.read()[-3000:]}")
    if not waiting:
      return
  raise AssertionError("the workers never reached their checkpoint")


def _joined_reference(data_dir: str) -> dict[str, np.ndarray]:
  """One 8-device process fed both processes' batches joined: what the 2-process job computes."""
  config = train_worker.tiny_config(data_dir, STEPS)
  plan = train.resolve(config)
  tx, schedule = optim.make_optimizer(config.optim, plan.model, STEPS)
  state = train_state.init_sharded(plan.model, tx, config.seed, plan.mesh)
  sc = train_step.StepConfig(plan.model, *plan.anneal, config.randomness.label_dropout)
  step = train_step.jit_train_step(
    sc, tx, schedule, plan.mesh, train_state.state_shardings(plan.model, tx, plan.mesh)
  )
  parts = [
    iter(
      pipeline.make_dataset(
        data_dir, global_batch=16, seed=config.seed, process_index=i, process_count=2
      )
    )
    for i in range(2)
  ]
  with sharding.activate(plan.mesh):
    for _ in range(STEPS):
      local = [next(it) for it in parts]
      joined = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
      state, _ = step(state, pipeline.to_global(joined, sharding.batch_sharding(plan.mesh)))
  return traverse_util.flatten_dict(jax.device_get(state.params), sep="/")


@pytest.mark.slow
def test_killed_two_process_job_restarts_and_resumes(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  workdir = tmp_path / "run"
  first = _start(workdir, data_dir, pause_at=PAUSE_AT)
  try:
    _wait_for_pause(first)
  finally:
    for proc in first:  # the whole JobSet goes down at once, without cleanup
      proc.kill()
      proc.communicate()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(PAUSE_AT)]

  second = _start(workdir, data_dir)  # JobSet's restart: the same command, a new coordinator
  logs = []
  for proc in second:
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-3000:]
    logs.append(err)
  assert f"Restored checkpoint at step {PAUSE_AT}" in logs[0]
  assert f"Training to step {STEPS}:" in logs[0] and f"Starting at step {PAUSE_AT}" in logs[0]
  assert "Restored checkpoint" not in logs[1]  # the console lines come from process 0 only
  assert f"step {STEPS}/{STEPS}" in logs[0] and f"step {STEPS}/{STEPS}" not in logs[1]
  assert sorted(p.name for p in (workdir / f"checkpoints/{STEPS}/data_iter").iterdir()) == [
    "commit_success.txt",
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]

  resumed = dict(np.load(workdir / "params.npz"))
  reference = _joined_reference(data_dir)
  assert set(resumed) == set(reference)
  for key, value in reference.items():
    np.testing.assert_allclose(resumed[key], value, atol=1e-5, err_msg=key)
