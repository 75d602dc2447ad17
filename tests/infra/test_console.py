"""The console: one line per train.log_every steps plus warnings; third-party INFO only with
--verbosity; config.profile writes a trace into the workdir."""

import subprocess
import sys

import pytest

import tests
from rar_jax.infra import console
from rar_jax.training import progress_line, train
from tests.helpers import train_worker

ROOT = tests.ROOT

APP = """
from absl import app, logging
from rar_jax.infra import console

def main(argv):
  console.setup()
  logging.info("third-party info")
  logging.warning("a warning")
  console.info("own line %d", 7)

app.run(main)
"""


def _app(*flags: str) -> list[str]:
  proc = subprocess.run(
    [sys.executable, "-c", APP, *flags], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr
  return (proc.stdout + proc.stderr).splitlines()


@pytest.mark.slow
def test_third_party_info_only_with_verbosity():
  quiet = _app()
  assert len(quiet) == 2, quiet
  assert "a warning" in quiet[0] and quiet[1].endswith(" own line 7")
  loud = "\n".join(_app("--verbosity=0"))
  assert "third-party info" in loud and "a warning" in loud
  assert loud.count("own line 7") == 1  # printed once, not again by absl's handler


def test_progress_line_and_durations():
  assert [console.format_duration(s) for s in (0.4, 42, 185, 7620, 3 * 86400 + 4 * 3600)] == [
    "0s",
    "42s",
    "3m05s",
    "2h07m",
    "3d04h",
  ]
  line = progress_line.ProgressLine(800, 0)
  values = {
    "loss": 1.9798,
    "accuracy": 0.4873,
    "random_ratio": 1.0,
    "learning_rate": 4.9e-4,
    "images_per_s": 101.2,
    "grad_norm": 0.6,
  }
  text = line(50, values)
  assert text.startswith("step  50/800  loss 1.980  acc 0.487  r 1.00  lr 4.9e-04  101 img/s  ETA ")


def test_progress_prints_when_due_with_rate_and_eta(caplog):
  now = [0.0]
  progress = console.Progress(10, "chunks", every_s=30.0, clock=lambda: now[0])
  with caplog.at_level("INFO", logger="rar_jax.infra.console"):
    now[0] = 10.0
    assert progress.advance(2) is None  # 10 s since the start: not due yet
    now[0] = 40.0
    assert progress.advance(2) == "chunks  4/10  0.1/s  ETA 1m00s"  # 4 in 40 s, 6 to go
    now[0] = 41.0
    assert list(progress.iterate(range(6))) == list(range(6))  # the last one is always printed
  lines = [r.getMessage() for r in caplog.records if r.name == "rar_jax.infra.console"]
  assert lines == ["chunks  4/10  0.1/s  ETA 1m00s", "chunks 10/10  6/s  ETA 0s"]


@pytest.mark.slow
def test_training_prints_a_line_per_log_every_and_profiles(tmp_path, caplog):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  config = train_worker.tiny_config(data_dir, 6)
  config.train.log_every = 3
  config.profile.start_step, config.profile.num_steps = 2, 2
  with caplog.at_level("INFO", logger="rar_jax.infra.console"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  lines = [r.getMessage() for r in caplog.records if r.name == "rar_jax.infra.console"]
  steps = [line.split()[1] for line in lines if line.startswith("step ")]
  assert steps == ["3/6", "6/6"], lines
  assert any(line.startswith("Profile of steps 3-4 in ") for line in lines), lines
  traces = list((tmp_path / "run" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_profile_config_is_validated(tmp_path):
  config = train_worker.tiny_config(str(tmp_path), 6)
  config.profile.num_steps = -1
  with pytest.raises(ValueError, match=r"profile.num_steps must be >= 0, got -1"):
    train.resolve(config)
