"""Export (from a workdir, to torch) and sample sets (resumable chunks -> ADM npz)."""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

import tests
from configs import digits
from rar_jax import sharding, tokenizers
from rar_jax.data import pipeline
from rar_jax.infra import atomic_files, checkpoint_integrity, checkpointing, user_errors
from rar_jax.model import convert, presets
from rar_jax.sampling import decoding, export, images, sample
from rar_jax.training import optim, train_state
from tests.helpers import train_worker

ROOT = str(tests.ROOT)


def _digits_config():
  c = digits.get_config()
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 2, 4, 64
  return c


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A workdir holding config.json and one checkpoint of a (freshly initialised) model."""
  workdir = str(tmp_path_factory.mktemp("workdir"))
  config = _digits_config()
  cfg = presets.resolve(config.model)
  tx, _ = optim.make_optimizer(config.optim, cfg, 10)
  mesh = sharding.make_mesh()
  state = train_state.init_sharded(cfg, tx, 0, mesh)
  data_dir = train_worker.write_random_dataset(os.path.join(workdir, "data"))
  data_iter = iter(pipeline.make_dataset(data_dir, global_batch=8, seed=0))
  checkpointing.write_workdir_config(workdir, config)
  manager = checkpointing.make_manager(workdir, config.checkpoint)
  checkpointing.save(manager, 7, state, data_iter, force=True)
  manager.wait_until_finished()
  return workdir, jax.device_get(state.params)


@pytest.mark.slow
def test_export_from_workdir_loads_on_another_mesh(trained_workdir, tmp_path):
  workdir, params = trained_workdir
  config = checkpointing.read_workdir_config(workdir)
  cfg = presets.resolve(config.model)
  restored = export.params_from_workdir(workdir, None, cfg, sharding.make_mesh((2, 2, 2)))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), params)
  export.write(str(tmp_path / "f32"), restored, cfg, config)
  export.write(str(tmp_path / "bf16"), restored, cfg, config, dtype="bfloat16")
  with pytest.raises(FileExistsError, match="f32 already exists"):
    export.write(str(tmp_path / "f32"), restored, cfg, config)
  exp = export.load(str(tmp_path / "f32"), mesh=sharding.make_mesh((4, 1, 2)))
  assert exp.model == cfg and exp.image_size == 8 and exp.tokenizer["kind"] == "pixel"
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(exp.params), params)
  low = export.load(str(tmp_path / "bf16"))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3),
    jax.device_get(low.params),
    params,
  )


@pytest.mark.slow
def test_export_cli_writes_an_official_state_dict(trained_workdir, tmp_path):
  torch = pytest.importorskip("torch", reason="writing .bin needs the optional torch extra")
  workdir, params = trained_workdir
  out = tmp_path / "rar.bin"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "rar_jax.sampling.export",
      f"--workdir={workdir}",
      f"--output={out}",
      "--format=torch",
    ],
    cwd=ROOT,
    check=True,
    capture_output=True,
  )
  state = torch.load(out, weights_only=True)
  cfg = presets.resolve(_digits_config().model)
  assert {k: tuple(v.shape) for k, v in state.items()} == convert.official_shapes(cfg)
  back = convert.from_official({k: v.numpy() for k, v in state.items()}, cfg)
  jax.tree.map(np.testing.assert_array_equal, back, params)


def _command(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
  """`python -m module args` run from cwd, with this checkout's rar_jax."""
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=cwd,
    env={**os.environ, "PYTHONPATH": ROOT},
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_export_and_sample_take_relative_paths(trained_workdir, tmp_path):
  """`export --workdir=workdirs/digits --output=workdirs/digits_export`, then `sample
  --export=workdirs/digits_export --output=samples/digits`, run from the directory the paths
  are relative to (as docs/guides/sampling.md writes them): no stray temporaries beside the
  export, the same parameters, the sample set's manifest naming the export absolutely."""
  workdir, params = trained_workdir
  shutil.copytree(workdir, tmp_path / "workdirs" / "digits")
  args = ["--workdir=workdirs/digits", "--output=workdirs/digits_export"]
  done = _command("rar_jax.sampling.export", *args, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert sorted(os.listdir(tmp_path / "workdirs")) == ["digits", "digits_export"]
  exp_dir = tmp_path / "workdirs" / "digits_export"
  assert sorted(os.listdir(exp_dir)) == ["checksums.json", "export.json", "params"]
  assert not [p for p in os.listdir(exp_dir / "params") if "tmp" in p]
  exp = export.load(str(exp_dir))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(exp.params), params)

  again = _command("rar_jax.sampling.export", *args, cwd=tmp_path)  # never overwritten
  assert again.returncode != 0 and "digits_export already exists" in again.stderr
  assert sorted(os.listdir(tmp_path / "workdirs")) == ["digits", "digits_export"]

  args = ["--export=workdirs/digits_export", "--output=samples/digits", "--num_samples=8"]
  done = _command("rar_jax.sampling.sample", *args, "--batch_size=8", cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  pictures = np.load(tmp_path / "samples" / "digits" / sample.SAMPLES_FILE)["arr_0"]
  assert pictures.shape == (8, 8, 8, 3)
  recorded = json.loads((tmp_path / "samples" / "digits" / sample.MANIFEST_FILE).read_text())
  assert recorded["export"] == str(exp_dir)


@pytest.mark.parametrize("fails_in", ["orbax", "export.json"])
def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, fails_in):
  """An export that fails while writing its parameters or after them (a relative output)
  leaves neither the output nor a temporary beside it, and the error is the original one."""
  params = {"w": np.ones((4, 8), np.float32), "b": np.zeros(8, np.float32)}
  config = _digits_config()
  cfg = presets.resolve(config.model)
  monkeypatch.chdir(tmp_path)
  (tmp_path / "exports").mkdir()

  def fail(*args, **kwargs):
    raise OSError("disk full")

  if fails_in == "orbax":
    right = ocp.StandardCheckpointer.save

    def fail_while_writing(self, *args, **kwargs):  # Orbax's async write may be under way
      right(self, *args, **kwargs)
      fail()

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", fail_while_writing)
  else:
    monkeypatch.setattr(export.atomic_files, "write_text", fail)
  with pytest.raises(OSError, match="disk full"):
    export.write("exports/digits", params, cfg, config)
  assert os.listdir(tmp_path / "exports") == []


def test_class_schedule_is_contiguous_and_balanced():
  classes = sample.class_schedule(50_000, 1000)
  assert (np.bincount(classes) == 50).all() and (np.diff(classes) >= 0).all()
  assert sample.class_schedule(7, 3).tolist() == [0, 0, 0, 1, 1, 2, 2]


@pytest.mark.slow
def test_sample_set_is_resumable_and_adm_formatted(trained_workdir, tmp_path):
  workdir, params = trained_workdir
  config = checkpointing.read_workdir_config(workdir)
  cfg = presets.resolve(config.model)
  export.write(str(tmp_path / "exp"), params, cfg, config)
  exp = export.load(str(tmp_path / "exp"))
  tok = tokenizers.build(exp.tokenizer, exp.image_size)
  settings = decoding.SamplingConfig(guidance_scale=2.0)
  out = epath.Path(tmp_path / "samples")
  sample.generate(exp, tok, out, num_samples=20, batch_size=8, seed=3, settings=settings)
  sample.assemble(out, 20, cfg.num_classes, 8)
  first = np.load(out / "samples.npz")
  assert first["arr_0"].shape == (20, 8, 8, 3) and first["arr_0"].dtype == np.uint8
  np.testing.assert_array_equal(first["labels"], sample.class_schedule(20, 10))
  chunks = sorted((out / "chunks").iterdir())
  assert len(chunks) == 3
  mtimes = {p.name: p.stat().mtime for p in chunks}
  chunks[1].unlink()
  sample.generate(exp, tok, out, num_samples=20, batch_size=8, seed=3, settings=settings)
  sample.assemble(out, 20, cfg.num_classes, 8)
  again = np.load(out / "samples.npz")
  np.testing.assert_array_equal(again["arr_0"], first["arr_0"])
  for p in (out / "chunks").iterdir():
    if p.name != chunks[1].name:
      assert p.stat().mtime == mtimes[p.name]
  assert (out / "grid.png").exists()


def test_uint8_conversion_truncates_and_grid_layout():
  x = np.array([-0.5, 0.0, 0.5, 0.999, 1.0, 2.0], np.float32)
  assert images.to_uint8(x).tolist() == [0, 0, 127, 254, 255, 255]
  pictures = np.zeros((6, 8, 8, 3), np.uint8)
  pictures[4] = 255  # row 1, column 1 of a 3-column grid
  grid = images.image_grid(pictures, columns=3, min_cell=16, gap=2)
  assert grid.shape == (2 * 18 + 2, 3 * 18 + 2, 3)
  assert (grid[18 + 2 : 18 + 18, 18 + 2 : 18 + 18] == 255).all()
  assert (grid[2:18, 2:18] == 0).all() and (grid[0:2] == 128).all()


def _sample_cli(export_dir, out, *flags: str) -> subprocess.CompletedProcess:
  """`python -m rar_jax.sampling.sample` of 20 images in chunks of 8, seed 3 unless flags say."""
  args = [f"--export={export_dir}", f"--output={out}", "--num_samples=20", "--batch_size=8"]
  return subprocess.run(
    [sys.executable, "-m", "rar_jax.sampling.sample", *args, "--seed=3", *flags],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": ROOT},
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.slow
def test_sample_set_refuses_other_settings_and_overwrite_starts_over(trained_workdir, tmp_path):
  workdir, params = trained_workdir
  config = checkpointing.read_workdir_config(workdir)
  cfg = presets.resolve(config.model)
  for name in ("exp", "exp2"):
    export.write(str(tmp_path / name), params, cfg, config)
  out = tmp_path / "samples"
  first = _sample_cli(tmp_path / "exp", out)
  assert first.returncode == 0, first.stderr
  assert "3 of 3 chunks to sample" in first.stderr
  recorded = json.loads((out / sample.MANIFEST_FILE).read_text())
  assert recorded["seed"] == 3 and recorded["num_samples"] == 20
  assert recorded["export"] == str(tmp_path / "exp") and recorded["sampling"]["guidance_scale"] == 2
  samples = np.load(out / "samples.npz")["arr_0"]
  chunks = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()}

  same = _sample_cli(tmp_path / "exp", out)  # the same settings resume (nothing left to do)
  assert same.returncode == 0 and "0 of 3 chunks to sample" in same.stderr, same.stderr

  refusals = {
    ("--guidance_scale=3",): "sampling.guidance_scale=2.0 there, sampling.guidance_scale=3.0 now",
    ("--seed=4",): "seed=3 there, seed=4 now",
    ("--num_samples=24",): "num_samples=20 there, num_samples=24 now",
    ("--export=" + str(tmp_path / "exp2"),): f"export='{tmp_path / 'exp'}' there",
  }
  for flags, message in refusals.items():
    proc = _sample_cli(tmp_path / "exp", out, *flags)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert message in lines[0] and "--overwrite" in lines[0], lines[0]
  assert {p.name: p.stat().st_mtime_ns for p in (out / "chunks").iterdir()} == chunks
  np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], samples)

  (out / "notes.txt").write_text("mine")  # not the sampler's: --overwrite keeps it
  again = _sample_cli(tmp_path / "exp", out, "--seed=4", "--overwrite")
  assert again.returncode == 0 and "3 of 3 chunks to sample" in again.stderr, again.stderr
  assert json.loads((out / sample.MANIFEST_FILE).read_text())["seed"] == 4
  assert not (np.load(out / "samples.npz")["arr_0"] == samples).all()
  assert (out / "notes.txt").read_text() == "mine"

  bad = _sample_cli(tmp_path / "exp", tmp_path / "other", "--guidance_scale=-1")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
    "error: sampling.guidance_scale must be >= 0 (0 is off), got -1.0"
  ]


@pytest.mark.slow
def test_sample_set_without_manifest_is_refused(trained_workdir, tmp_path):
  workdir, params = trained_workdir
  config = checkpointing.read_workdir_config(workdir)
  cfg = presets.resolve(config.model)
  export.write(str(tmp_path / "exp"), params, cfg, config)
  exp = export.load(str(tmp_path / "exp"))
  tok = tokenizers.build(exp.tokenizer, exp.image_size)
  out = epath.Path(tmp_path / "samples")
  (out / "chunks").mkdir(parents=True)
  (out / "chunks" / "000000-p000.npz").write_bytes(b"old")
  settings = decoding.SamplingConfig()
  with pytest.raises(FileExistsError, match=r"holds samples but no sample_set\.json"):
    sample.generate(exp, tok, out, num_samples=8, batch_size=8, seed=0, settings=settings)


# ---------------------------------------------------------------------------------------------
# Reliability (issue 24): checksummed exports, never half written; a full disk while sampling.


def _disk_full(path) -> OSError:
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


@pytest.mark.slow
def test_exports_are_checksummed_replaced_only_with_overwrite_never_half_written(
  trained_workdir, tmp_path, monkeypatch
):
  workdir, params = trained_workdir
  config = checkpointing.read_workdir_config(workdir)
  cfg = presets.resolve(config.model)
  out = tmp_path / "exp"
  export.write(str(out), params, cfg, config)
  assert (out / checkpoint_integrity.MANIFEST).exists()
  assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no temporary left
  with pytest.raises(FileExistsError, match=r"exp already exists; pass --overwrite to replace"):
    export.write(str(out), params, cfg, config)

  halved = jax.tree.map(lambda a: a / 2, params)
  monkeypatch.setattr(
    checkpoint_integrity, "write_manifest", lambda d: (_ for _ in ()).throw(_disk_full(d))
  )
  kept = r"^no space left on device: the export to .*exp could not be written; the export there"
  with pytest.raises(user_errors.DiskFullError, match=kept + " before is kept; free some space"):
    export.write(str(out), halved, cfg, config, overwrite=True)
  monkeypatch.undo()
  assert [p.name for p in tmp_path.iterdir()] == ["exp"]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(export.load(str(out)).params), params)

  export.write(str(out), halved, cfg, config, overwrite=True)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(export.load(str(out)).params), halved)
  assert [p.name for p in tmp_path.iterdir()] == ["exp"]

  data = max(
    (p for p in (out / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
  )
  raw = bytearray(data.read_bytes())
  raw[len(raw) // 2] ^= 0x01  # one flipped bit
  data.write_bytes(bytes(raw))
  with pytest.raises(export.CorruptExportError, match=rf"^export .*exp is corrupt: {data} does "
                     r"not match its saved SHA-256 checksum; export it again$"):  # fmt: skip
    export.load(str(out))


@pytest.mark.slow
def test_a_full_disk_while_sampling_keeps_the_finished_chunks_and_the_rerun_matches(
  trained_workdir, tmp_path, monkeypatch
):
  workdir, params = trained_workdir
  config = checkpointing.read_workdir_config(workdir)
  cfg = presets.resolve(config.model)
  export.write(str(tmp_path / "exp"), params, cfg, config)
  exp = export.load(str(tmp_path / "exp"))
  tok = tokenizers.build(exp.tokenizer, exp.image_size)
  settings = decoding.SamplingConfig(guidance_scale=2.0)
  straight = epath.Path(tmp_path / "straight")
  sample.generate(exp, tok, straight, num_samples=20, batch_size=8, seed=3, settings=settings)
  sample.assemble(straight, 20, cfg.num_classes, 8)

  out = epath.Path(tmp_path / "full")
  write_bytes, calls = atomic_files.write_bytes, []

  def fills_up(path, data):  # the third chunk finds the disk full
    calls.append(path)
    if len(calls) == 3:
      raise _disk_full(path)
    write_bytes(path, data)

  monkeypatch.setattr(atomic_files, "write_bytes", fills_up)
  with pytest.raises(user_errors.DiskFullError) as caught:
    sample.generate(exp, tok, out, num_samples=20, batch_size=8, seed=3, settings=settings)
  assert str(caught.value) == (
    f"no space left on device: chunk 2 could not be written to {out}/chunks/000002-p000.npz; "
    "the 2 finished chunks of 3 are kept; free some space and rerun the same command to sample "
    "the rest"
  )
  assert sorted(p.name for p in (out / "chunks").iterdir()) == [
    "000000-p000.npz",
    "000001-p000.npz",
  ]
  kept = (out / "chunks" / "000000-p000.npz").stat().mtime
  monkeypatch.undo()  # space freed
  sample.generate(exp, tok, out, num_samples=20, batch_size=8, seed=3, settings=settings)
  assert (out / "chunks" / "000000-p000.npz").stat().mtime == kept  # only chunk 2 sampled

  def no_space(path, data):
    raise _disk_full(path)

  monkeypatch.setattr(atomic_files, "write_bytes", no_space)
  with pytest.raises(user_errors.DiskFullError, match=r"^no space left on device: .*samples\.npz "
                     r"could not be written; all 3 chunks are kept; free some space"):  # fmt: skip
    sample.assemble(out, 20, cfg.num_classes, 8)
  monkeypatch.undo()
  sample.assemble(out, 20, cfg.num_classes, 8)
  rerun, reference = np.load(out / "samples.npz"), np.load(straight / "samples.npz")
  for key in ("arr_0", "labels"):
    np.testing.assert_array_equal(rerun[key], reference[key])
