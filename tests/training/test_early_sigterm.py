"""SIGTERM before the first training step (here: while the step compiles) ends the job cleanly:
exit 0, the current state checkpointed, and the note saying so."""

import select
import signal
import subprocess
import sys
import time

import pytest

import tests
from tests.helpers import train_worker

ROOT = tests.ROOT

# python -c SCRIPT WORKDIR DATA_DIR: the tiny job, printing COMPILING as its step starts compiling.
SCRIPT = """
import sys, time
from rar_jax.training import train
from tests.helpers import train_worker

compile_step = train._compile_step

def announced_compile(*args, **kwargs):
  print("COMPILING", flush=True)
  time.sleep(2)  # the signal arrives mid-compile
  return compile_step(*args, **kwargs)

train._compile_step = announced_compile
state = train.train_and_evaluate(train_worker.tiny_config(sys.argv[2], 1000), sys.argv[1])
print(f"DONE {int(state.step)}", flush=True)
"""


@pytest.mark.slow
def test_sigterm_while_compiling_checkpoints_and_exits_cleanly(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
    [sys.executable, "-c", SCRIPT, str(workdir), data_dir],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline:
    if select.select([proc.stdout], [], [], 0.1)[0]:
      line = proc.stdout.readline()
      if line.startswith("COMPILING") or not line:
        break
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, err[-3000:]
  assert "DONE 0" in out
  assert "Stopped at step 0 after SIGTERM; checkpoint written" in err
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["0"]
  assert (workdir / "config.json").exists()
