"""The training job: mesh invariance, exact resume after SIGKILL, SIGTERM, checkpoint fallback,
and config validation."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

import tests
from configs import common
from rar_jax import sharding
from rar_jax.data import pipeline
from rar_jax.infra import checkpointing
from rar_jax.model import presets
from rar_jax.training import optim, train, train_state, train_step
from tests.helpers import train_worker

WORKER = pathlib.Path(train_worker.__file__)
ROOT = tests.ROOT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_worker.write_random_dataset(str(tmp_path_factory.mktemp("data")))


@pytest.mark.slow
def test_one_step_is_the_same_on_every_mesh():
  cfg = presets.resolve(
    dict(width=32, depth=2, heads=4, mlp_dim=64, seq_len=16, codebook_size=32, num_classes=10)
  )
  optim_cfg = {**common.base_config().optim, "lr": 1e-3, "warmup_steps": 2}
  tx, schedule = optim.make_optimizer(optim_cfg, cfg, 10)
  sc = train_step.StepConfig(cfg, 0, 10, 0.1)
  rng = np.random.default_rng(0)
  batch = {
    "tokens": rng.integers(0, 32, (8, 16), dtype=np.int32),
    "label": rng.integers(0, 10, (8,), dtype=np.int32),
  }
  results = {}
  for shape in [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]:
    devices = jax.devices()[: int(np.prod(shape))]
    mesh = sharding.make_mesh(shape, devices=devices)
    state = train_state.init_sharded(cfg, tx, 0, mesh)
    step = train_step.jit_train_step(
      sc, tx, schedule, mesh, train_state.state_shardings(cfg, tx, mesh)
    )
    with sharding.activate(mesh):
      state, metrics = step(state, pipeline.to_global(batch, sharding.batch_sharding(mesh)))
    results[shape] = (float(metrics["loss"]), jax.device_get(state.params))
  ref_loss, ref_params = results[(1, 1, 1)]
  for shape, (loss, params) in results.items():
    assert loss == pytest.approx(ref_loss, abs=1e-5), shape
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, ref_params)


def _start_worker(workdir, data_dir, steps, pause_at):
  return subprocess.Popen(
    [sys.executable, str(WORKER), str(workdir), data_dir, str(steps), str(pause_at)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )


def _wait_for(proc, prefix, timeout=240):
  import select

  for _ in range(timeout * 10):
    ready, _, _ = select.select([proc.stdout], [], [], 0.1)
    if ready:
      line = proc.stdout.readline()
      if line.startswith(prefix):
        return line
      if not line and proc.poll() is not None:
        break
  raise AssertionError(f"worker never printed {prefix!r} (exit code {proc.poll()})")


def _params(workdir, data_dir, steps):
  """Runs (or resumes) the tiny job in-process to `steps` and returns host params."""
  return jax.device_get(
    train.train_and_evaluate(train_worker.tiny_config(data_dir, steps), str(workdir)).params
  )


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, data_dir):
  killed, straight = tmp_path / "killed", tmp_path / "straight"
  proc = _start_worker(killed, data_dir, 6, pause_at=3)
  _wait_for(proc, "PAUSED 3")
  proc.kill()  # SIGKILL: no handler, no cleanup
  proc.wait()
  resumed = _params(killed, data_dir, 6)
  uninterrupted = _params(straight, data_dir, 6)
  jax.tree.map(np.testing.assert_array_equal, resumed, uninterrupted)
  # Same batches: the data iterators stand at the same position.
  it = "checkpoints/6/data_iter/process_0-of-1.json"
  assert (killed / it).read_text() == (straight / it).read_text()


@pytest.mark.slow
def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(tmp_path, data_dir):
  proc = _start_worker(tmp_path, data_dir, 1000, pause_at=3)
  _wait_for(proc, "PAUSED 3")
  proc.send_signal(signal.SIGTERM)
  assert _wait_for(proc, "DONE").strip() == "DONE 4"
  assert proc.wait(timeout=60) == 0
  config = train_worker.tiny_config(data_dir, 1000)
  config.mesh.shape = (2, 2, 2)  # restore onto another mesh than the (8, 1, 1) that saved
  plan = train.resolve(config)
  tx, _ = optim.make_optimizer(config.optim, plan.model, plan.total_steps)
  manager = checkpointing.make_manager(str(tmp_path), config.checkpoint)
  assert manager.all_steps() == [3, 4]
  data_iter = iter(pipeline.make_dataset(data_dir, global_batch=16, seed=config.seed))
  abstract = train_state.abstract_state(plan.model, tx, plan.mesh)
  state = checkpointing.restore_latest(manager, abstract, data_iter)
  assert int(state.step) == 4
  kernel = state.params["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
  assert kernel.sharding.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  assert tuple(kernel.sharding.spec) == (None, "fsdp", "tensor")


@pytest.mark.slow
def test_checkpoints_keep_the_last_k_and_every_mth(tmp_path, data_dir):
  cfg = presets.resolve(
    dict(width=8, depth=1, heads=2, mlp_dim=8, seq_len=16, codebook_size=32, num_classes=10)
  )
  tx, _ = optim.make_optimizer(train_worker.tiny_config(data_dir, 1).optim, cfg, 10)
  state = train_state.init_sharded(cfg, tx, 0, sharding.make_mesh())
  data_iter = iter(pipeline.make_dataset(data_dir, global_batch=16, seed=0))
  manager = checkpointing.make_manager(
    str(tmp_path), {"every_steps": 1, "keep": 2, "keep_every": 4}
  )
  for step in range(1, 11):
    checkpointing.save(manager, step, state, data_iter)
  manager.wait_until_finished()
  assert manager.all_steps() == [4, 8, 9, 10]


@pytest.mark.slow
def test_truncated_newest_checkpoint_falls_back(tmp_path, data_dir, caplog):
  config = train_worker.tiny_config(data_dir, 6)
  train.train_and_evaluate(config, str(tmp_path))
  newest = tmp_path / "checkpoints" / "6" / "state"
  for path in newest.rglob("*"):  # cut every array data file in half
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  plan = train.resolve(config)
  tx, _ = optim.make_optimizer(config.optim, plan.model, plan.total_steps)
  manager = checkpointing.make_manager(str(tmp_path), config.checkpoint)
  data_iter = iter(pipeline.make_dataset(data_dir, global_batch=16, seed=config.seed))
  abstract = train_state.abstract_state(plan.model, tx, plan.mesh)
  with caplog.at_level("WARNING"):
    state = checkpointing.restore_latest(manager, abstract, data_iter)
  assert int(state.step) == 3
  assert any(os.path.join("checkpoints", "6") in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
  "override,message",
  [
    (
      {"train.global_batch": 12},
      r"train.global_batch=12 is not divisible by the data-parallel size 8",
    ),
    ({"mesh.shape": (2, 2, 1)}, r"mesh shape \(2, 2, 1\) has 4 devices but 8 are available"),
    (
      {"randomness.anneal_start_fraction": 0.9},
      r"anneal end \(8 steps\) is before its start \(9 steps\)",
    ),
    ({"model.variant": "XS"}, r"model.variant='XS' is not one of"),
  ],
)
def test_config_errors_are_named(data_dir, override, message):
  config = train_worker.tiny_config(data_dir, 10)
  config.model.width = None if "model.variant" in override else config.model.width
  for key, value in override.items():
    group, name = key.split(".")
    config[group][name] = value
  with pytest.raises(ValueError, match=message):
    train.resolve(config)


def test_data_that_does_not_fit_the_model_is_named(tmp_path, data_dir):
  config = train_worker.tiny_config(data_dir, 10)
  config.model.codebook_size = 64
  with pytest.raises(ValueError, match="codebook_size"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.slow
def test_nonfinite_loss_stops_the_job_naming_the_step(tmp_path, data_dir):
  config = train_worker.tiny_config(data_dir, 50)
  config.optim.lr, config.optim.warmup_steps, config.optim.grad_clip_norm = 1e35, 1, 1e35
  with pytest.raises(FloatingPointError, match=r"non-finite .* at step \d+"):
    train.train_and_evaluate(config, str(tmp_path))
  manager = checkpointing.make_manager(str(tmp_path), config.checkpoint)
  assert manager.all_steps() == []  # nothing non-finite was saved


def test_digits_job_end_to_end(tmp_path, monkeypatch):
  """The README's main job, shrunk: data created when absent (with its validation split),
  TensorBoard sample grids and held-out raster loss during training, and the final grid,
  score and digits FID."""
  from tensorboard.backend.event_processing import event_accumulator

  from configs import digits

  config = digits.get_config()
  config.model.width, config.model.depth, config.model.mlp_dim = 32, 1, 64
  config.train.steps, config.train.global_batch = 4, 16
  config.checkpoint.every_steps, config.eval.grid_every, config.eval.samples_per_class = 4, 2, 2
  config.eval.every_steps, config.eval.fid_samples = 3, 20
  monkeypatch.chdir(tmp_path)  # relative paths, as in the README command
  config.data.dir = "digits_data"
  train.train_and_evaluate(config, "run")
  assert (tmp_path / "digits_data" / "metadata.json").exists()
  score = json.loads((tmp_path / "run" / "sample_score.json").read_text())
  assert score["num_samples"] == 20 and len(score["per_class"]) == 10
  assert 0.0 <= score["accuracy"] <= 1.0 and score["real_digits_accuracy"] > 0.95
  from PIL import Image

  assert Image.open(tmp_path / "run" / "samples.png").size == (2 * 66 + 2, 10 * 66 + 2)
  events = event_accumulator.EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
  events.Reload()
  grids = [e.step for e in events.Tensors("samples")]
  assert grids == [2, 4]
  assert [e.step for e in events.Tensors("heldout_raster_loss")] == [3, 4]  # every 3, and last
  (quality,) = json.loads((tmp_path / "run" / "sample_quality.json").read_text())
  assert quality["step"] == 4 and quality["features"] == "digits" and quality["num_samples"] == 20
  assert quality["fid"] > 0
