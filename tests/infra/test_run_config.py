"""Resuming a workdir with another config: a changed model key is refused up front, other keys
only with --allow_config_change, and config.json is written only once the state exists."""

import json
import pathlib
import subprocess
import sys

import pytest

import tests
from rar_jax.infra import checkpointing, run_config
from rar_jax.training import train
from tests.helpers import train_worker

ROOT = tests.ROOT


def _config():
  return train_worker.tiny_config("/data", 3)


def _workdir_with_checkpoint(path: pathlib.Path, config) -> pathlib.Path:
  """A workdir recording config, with an (empty) checkpoint step directory."""
  (path / "checkpoints" / "3").mkdir(parents=True)
  (path / "config.json").write_text(config.to_json(indent=2))
  return path


def test_model_key_is_refused_even_when_changes_are_allowed(tmp_path):
  workdir = _workdir_with_checkpoint(tmp_path, _config())
  config = _config()
  config.model.width = 64
  for allow in (False, True):
    with pytest.raises(
      run_config.ConfigChangeError, match=r"model.width is 32 in .*config.json but 64 now"
    ):
      run_config.check(str(workdir), config, allow_changes=allow)


def test_other_keys_need_the_flag_and_free_keys_do_not(tmp_path):
  workdir = _workdir_with_checkpoint(tmp_path, _config())
  config = _config()
  config.optim.lr, config.train.steps = 5e-4, 6
  with pytest.raises(
    run_config.ConfigChangeError,
    match=r"optim.lr is 0.0004 in .* but 0.0005 now \(and 1 more\); pass --allow_config_change",
  ):
    run_config.check(str(workdir), config)
  run_config.check(str(workdir), config, allow_changes=True)
  free = _config()
  free.profile.num_steps, free.train.log_every, free.eval.grid_every = 5, 7, 9
  free.mesh.shape, free.data.read_threads = (2, 2, 2), 4
  run_config.check(str(workdir), free)


def test_how_the_model_is_computed_may_change_with_the_flag(tmp_path):
  workdir = _workdir_with_checkpoint(tmp_path, _config())
  config = _config()
  config.model.remat_policy = "full"
  with pytest.raises(run_config.ConfigChangeError, match='model.remat_policy is "none"'):
    run_config.check(str(workdir), config)
  run_config.check(str(workdir), config, allow_changes=True)


def test_keys_on_one_side_only_are_not_compared(tmp_path):
  recorded = json.loads(_config().to_json())
  del recorded["optim"]["lr"]
  recorded["model"]["retired_key"] = 1
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps(recorded))
  run_config.check(str(tmp_path), _config())


def test_a_workdir_without_checkpoint_is_not_a_resume(tmp_path):
  (tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1").mkdir(parents=True)
  (tmp_path / "config.json").write_text(_config().to_json())
  config = _config()
  config.model.width = 64
  run_config.check(str(tmp_path), config)


def _train_cli(workdir, config_file, *flags):
  return subprocess.run(
    [sys.executable, "-m", "rar_jax.main", f"--config={config_file}", f"--workdir={workdir}"]
    + list(flags),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _last_line(proc) -> str:
  return proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_with_another_config_from_the_command_line(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  config_file = tmp_path / "tiny.py"
  config_file.write_text(
    "from tests.helpers import train_worker\n\n\ndef get_config():\n"
    f"  return train_worker.tiny_config({data_dir!r}, 3)\n"
  )
  workdir = tmp_path / "run"
  first = _train_cli(workdir, config_file)
  assert first.returncode == 0, first.stderr[-3000:]
  recorded = (workdir / "config.json").read_bytes()

  model = _train_cli(workdir, config_file, "--config.model.width=64")
  assert model.returncode == 2
  assert _last_line(model) == (
    f"error: {workdir} holds checkpoints of another model: model.width is 32 in "
    f"{workdir / 'config.json'} but 64 now; model keys cannot change on resume (use another "
    "workdir)"
  )
  assert "Traceback" not in model.stderr and "Restored" not in model.stderr
  assert (workdir / "config.json").read_bytes() == recorded

  lr = _train_cli(workdir, config_file, "--config.optim.lr=5e-4")
  assert lr.returncode == 2
  assert "optim.lr is 0.0004" in _last_line(lr) and "--allow_config_change" in _last_line(lr)
  assert (workdir / "config.json").read_bytes() == recorded

  allowed = _train_cli(workdir, config_file, "--config.optim.lr=5e-4", "--allow_config_change")
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert "Restored checkpoint at step 3" in allowed.stderr
  assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 5e-4

  same = _train_cli(workdir, config_file, "--config.optim.lr=5e-4")  # now the recorded config
  assert same.returncode == 0, same.stderr[-3000:]
  assert "Restored checkpoint at step 3" in same.stderr


@pytest.mark.slow
def test_config_json_is_written_only_once_the_state_is_restored(tmp_path):
  data_dir = train_worker.write_random_dataset(str(tmp_path / "data"))
  train.train_and_evaluate(train_worker.tiny_config(data_dir, 3), str(tmp_path))
  (tmp_path / checkpointing.CONFIG_FILE).unlink()  # nothing to compare with: the restore fails
  config = train_worker.tiny_config(data_dir, 3)
  config.model.width = 64
  with pytest.raises(RuntimeError, match="could be restored"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / checkpointing.CONFIG_FILE).exists()
