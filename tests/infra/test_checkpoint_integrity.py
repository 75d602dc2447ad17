"""Checkpoint reliability: keep >= 1, checksums verified at restore (a bit flip is a corrupt
checkpoint), a corrupt final checkpoint set aside so the rerun finishes, a save error that
stops the job at once naming the path, and export falling back like training."""

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from etils import epath

import tests
from rar_jax import sharding
from rar_jax.data import pipeline
from rar_jax.infra import checkpoint_integrity, checkpointing
from rar_jax.model import presets
from rar_jax.sampling import export
from rar_jax.training import optim, train, train_state
from tests.helpers import progress, train_worker

WORKER = pathlib.Path(train_worker.__file__)
ROOT = tests.ROOT
STEPS = 6  # checkpoints at 3 and 6 (tiny_config saves every 3 steps)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_worker.write_random_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  """A finished tiny run (checkpoints 3 and 6, each with its checksums); tests copy it."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  train.train_and_evaluate(train_worker.tiny_config(data_dir, STEPS), str(workdir))
  return workdir


def _copy(finished, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(finished, workdir)
  return workdir


def _largest_data_file(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=lambda p: p.stat().st_size)


def _flip_16_bytes(path: pathlib.Path) -> None:
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
  path.write_bytes(bytes(data))


def _run_worker(workdir, data_dir, steps, prefix=()):
  """The worker to `steps`; a worker that stops using CPU (a hang, as Orbax's wait for a folder
  that is never created) fails the test, a slow machine does not (tests/helpers/progress.py)."""
  return progress.run(
    [*prefix, sys.executable, str(WORKER), str(workdir), data_dir, str(steps)], cwd=ROOT
  )


def _restore(workdir, data_dir):
  """(restored step, params) of the workdir's newest usable checkpoint, in this process."""
  config = train_worker.tiny_config(data_dir, STEPS)
  plan = train.resolve(config)
  tx, _ = optim.make_optimizer(config.optim, plan.model, plan.total_steps)
  manager = checkpointing.make_manager(str(workdir), config.checkpoint)
  data_iter = iter(pipeline.make_dataset(data_dir, global_batch=16, seed=config.seed))
  abstract = train_state.abstract_state(plan.model, tx, plan.mesh)
  state = checkpointing.restore_latest(manager, abstract, data_iter)
  return int(state.step), jax.device_get(state.params)


@pytest.mark.parametrize("keep", [0, -2])
def test_keep_below_one_is_refused_at_validation(data_dir, keep):
  config = train_worker.tiny_config(data_dir, STEPS)
  config.checkpoint.keep = keep
  with pytest.raises(ValueError, match=rf"^checkpoint.keep must be >= 1 .*got {keep}$"):
    train.resolve(config)


@pytest.mark.slow
def test_keep_one_ends_with_the_final_checkpoint(tmp_path, data_dir):
  config = train_worker.tiny_config(data_dir, 4)
  config.checkpoint.keep = 1
  train.train_and_evaluate(config, str(tmp_path))
  manager = checkpointing.make_manager(str(tmp_path), config.checkpoint)
  assert manager.all_steps() == [4]  # 3 deleted, the forced final save kept
  status = checkpoint_integrity.verify(epath.Path(tmp_path) / "checkpoints" / "4")
  assert status == checkpoint_integrity.Status.VERIFIED


@pytest.mark.slow
def test_every_step_has_checksums_and_a_bit_flip_is_skipped(finished, tmp_path, data_dir, caplog):
  workdir = _copy(finished, tmp_path)
  for step in (3, 6):
    assert (workdir / "checkpoints" / str(step) / checkpoint_integrity.MANIFEST).exists()
  flipped = _largest_data_file(workdir / "checkpoints" / "6")
  _flip_16_bytes(flipped)
  with caplog.at_level("WARNING"):
    step, _ = _restore(workdir, data_dir)
  assert step == 3
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any(str(flipped) in w and "checksum" in w for w in warnings), warnings
  aside = list((workdir / "checkpoints" / "corrupt").iterdir())
  assert [p.name.split("-")[0] for p in aside] == ["6"]  # kept aside, not deleted
  assert (aside[0] / flipped.relative_to(workdir / "checkpoints" / "6")).exists()


def test_manifest_names_a_missing_file_and_tolerates_none(tmp_path):
  step_dir = epath.Path(tmp_path) / "5"
  (step_dir / "state").mkdir(parents=True)
  (step_dir / "state" / "a").write_bytes(b"x" * 100)
  assert checkpoint_integrity.verify(step_dir) == checkpoint_integrity.Status.UNVERIFIED
  checkpoint_integrity.write_manifest(step_dir)
  assert checkpoint_integrity.verify(step_dir) == checkpoint_integrity.Status.VERIFIED
  (step_dir / "state" / "a").write_bytes(b"x" * 99 + b"y")
  with pytest.raises(checkpoint_integrity.CorruptCheckpointError, match=r"state/a does not match"):
    checkpoint_integrity.verify(step_dir)
  (step_dir / "state" / "a").unlink()
  with pytest.raises(checkpoint_integrity.CorruptCheckpointError, match=r"state/a is missing"):
    checkpoint_integrity.verify(step_dir)


def test_malformed_manifest_makes_the_step_corrupt_not_a_crash(tmp_path):
  step_dir = epath.Path(tmp_path) / "5"
  (step_dir / "state").mkdir(parents=True)
  (step_dir / "state" / "a").write_bytes(b"x" * 100)
  (step_dir / checkpoint_integrity.MANIFEST).write_text('{"files": ["not", "a", "mapping"]}')
  assert not checkpointing.checksums_match(epath.Path(tmp_path), 5)


def test_a_failed_move_aside_is_one_error_naming_the_steps(tmp_path):
  class Stub:  # the two attributes set_aside uses
    directory = epath.Path(tmp_path) / "checkpoints"

    def reload(self):
      raise AssertionError("not reached")

  Stub.directory.mkdir()
  (Stub.directory / "corrupt").write_text("a file where the folder goes")
  with pytest.raises(checkpointing.CheckpointSaveError, match=r"cannot move .*\[6\] aside"):
    checkpointing.set_aside(Stub(), [6])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_rerun_after_a_corrupt_final_checkpoint_finishes(finished, tmp_path, data_dir, damage):
  workdir = _copy(finished, tmp_path)
  victim = _largest_data_file(workdir / "checkpoints" / "6")
  if damage == "flip":
    _flip_16_bytes(victim)
  else:
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  result = _run_worker(workdir, data_dir, STEPS)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == f"DONE {STEPS}"
  assert str(victim) in result.stderr  # the warning names the corrupt file
  assert "Moved the unusable checkpoint 6 aside" in result.stderr
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
    3,
    6,
  ]
  (aside,) = (workdir / "checkpoints" / "corrupt").iterdir()
  assert aside.name.startswith("6-") and str(aside) in result.stderr
  step, params = _restore(workdir, data_dir)  # the new final checkpoint verifies and restores
  assert step == STEPS
  _, reference = _restore(finished, data_dir)  # retrained from 3: the same as the first run
  jax.tree.map(np.testing.assert_array_equal, params, reference)


def _without_root_override() -> list[str]:
  """A command prefix under which chmod denies writes: none for a normal user; as root, the
  capabilities that bypass file permissions are dropped (setpriv), or the test is skipped."""
  if os.geteuid() != 0:
    return []
  setpriv = shutil.which("setpriv")
  if setpriv is None:
    pytest.skip("running as root without setpriv: chmod cannot deny root's writes")
  return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.slow
def test_save_error_stops_the_job_at_once_naming_the_path(finished, tmp_path, data_dir):
  workdir = _copy(finished, tmp_path)
  checkpoints = workdir / "checkpoints"
  prefix = _without_root_override()
  checkpoints.chmod(0o555)
  try:
    probe = subprocess.run([*prefix, "touch", str(checkpoints / "probe")], capture_output=True)
    assert probe.returncode != 0, "the read-only directory is still writable"
    result = _run_worker(workdir, data_dir, 9, prefix)  # a hang is a failure
  finally:
    checkpoints.chmod(0o755)
  assert result.returncode != 0
  line = f"cannot write checkpoints to {checkpoints} (PermissionError"
  assert line in result.stderr, result.stderr[-3000:]
  assert "the checkpoint at step 6 is kept" in result.stderr
  assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "6"]
  assert _restore(workdir, data_dir)[0] == STEPS


def test_probe_names_an_unwritable_checkpoint_directory(tmp_path):
  blocked = epath.Path(tmp_path) / "checkpoints"
  blocked.write_text("a file where the checkpoint directory should be")
  with pytest.raises(
    checkpointing.CheckpointSaveError,
    match=r"^cannot write checkpoints to .*checkpoints/sub \(NotADirectoryError.*step 4 is kept$",
  ):
    checkpointing.probe_writable(blocked / "sub", latest=4)


def _export(workdir, out, *extra):
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "rar_jax.sampling.export",
      f"--workdir={workdir}",
      f"--output={out}",
      *extra,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_export_skips_a_corrupt_newest_checkpoint(finished, tmp_path, caplog):
  workdir = _copy(finished, tmp_path)
  flipped = _largest_data_file(workdir / "checkpoints" / "6")
  _flip_16_bytes(flipped)
  config = checkpointing.read_workdir_config(str(workdir))
  cfg = presets.resolve(config.model)
  mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
  with caplog.at_level("WARNING"):
    params = export.params_from_workdir(str(workdir), None, cfg, mesh)
  warnings = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert str(flipped) in warnings and "Exporting checkpoint 3" in warnings
  reference = export.params_from_workdir(str(finished), 3, cfg, mesh)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), jax.device_get(reference))
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3", "6"]  # read only

  result = _export(workdir, tmp_path / "explicit", "--step=6")
  assert result.returncode != 0
  assert str(flipped) in result.stderr
  assert (
    f"checkpoint {workdir / 'checkpoints' / '6'} could not be restored (see the warnings "
    "above); pass --step=N with another step (available: 3, 6)"
  ) in result.stderr
  assert not (tmp_path / "explicit").exists()
