"""Every user error is one line, `error: ...`, with exit status 2, in every command (issue 24):
a config file that does not load, a full disk (the short cause, the path and what was kept),
missing, existing or corrupt files. Each case runs a console script of setup.cfg through its
entry function (`python -c`), so the test follows the commands wherever they move; a full disk
is injected at the file layer (tests/helpers/faults.py) before the command starts."""

import configparser
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import tests
from configs import digits
from rar_jax import sharding
from rar_jax.data import pipeline, pretokenize, records
from rar_jax.infra import checkpointing
from rar_jax.model import presets
from rar_jax.sampling import export
from rar_jax.training import optim, train_state

ROOT = tests.ROOT
SMALL = ("--config.model.width=32", "--config.model.depth=1", "--config.model.mlp_dim=64")
NO_EVAL = (
  "--config.eval.fid_samples=0",
  "--config.eval.every_steps=0",
  "--config.eval.grid_every=0",
)


def _entry(script: str) -> str:
  """'module:function' of a console script, from setup.cfg."""
  parser = configparser.ConfigParser()
  parser.read(ROOT / "setup.cfg")
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict(tuple(p.strip() for p in line.split("=")) for line in lines)[script]


def _run(script: str, *args: str, full: str | None = None, **kw) -> subprocess.CompletedProcess:
  """The console script with args (CPU only); full: a path under which writes find the disk
  full (kw: faults.disk_full's spare and only)."""
  module, function = _entry(script).split(":")
  fault = f"from tests.helpers import faults; faults.disk_full({full!r}, **{kw!r}); "
  code = (
    f"import sys; sys.argv = [{script!r}, *{list(args)!r}]; {fault if full else ''}"
    f"from {module} import {function}; {function}()"
  )
  inherited = {k: v for k, v in os.environ.items() if k != "RAR_TRACEBACK"}
  env = {**inherited, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
  )


def _one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
  """Exit status 2; the last stderr line is the error, naming every needle; no traceback or
  other error report before it (progress lines may precede it)."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and not any(
    line.startswith(("E", "ERROR")) and ":" in line[:30] for line in lines[:-1]
  ), proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[-1], lines[-1]
  return lines[-1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("digits") / "data")
  pretokenize.ensure_digits(path)
  return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_dir):
  """A digits workdir (small model) with config.json and checkpoint 1."""
  path = str(tmp_path_factory.mktemp("workdir") / "run")
  config = digits.get_config()
  config.model.width, config.model.depth, config.model.mlp_dim = 32, 1, 64
  cfg = presets.resolve(config.model)
  tx, _ = optim.make_optimizer(config.optim, cfg, 10)
  state = train_state.init_sharded(cfg, tx, 0, sharding.make_mesh())
  data_iter = iter(pipeline.make_dataset(data_dir, global_batch=8, seed=0))
  checkpointing.write_workdir_config(path, config)
  manager = checkpointing.make_manager(path, config.checkpoint)
  checkpointing.save(manager, 1, state, data_iter, force=True)
  manager.wait_until_finished()
  export.write(os.path.join(path, "export"), jax.device_get(state.params), cfg, config)
  return path


@pytest.mark.slow
@pytest.mark.parametrize(
  "script, args",
  [
    ("rar-train", ("--config=README.md", "--workdir=W")),
    ("rar-pretokenize", ("--config=README.md", "--output_dir=W")),
    ("rar-export", ("--official=x.bin", "--config=README.md", "--output=W")),
    ("rar-plan", ("--config=README.md", "--devices=1")),
    ("rar-sweep", ("run", "--config=README.md", "--workdir=W", "--mode=print")),
  ],
)
def test_a_config_file_that_is_not_python_is_one_line(script, args):
  _one_error_line(
    _run(script, *args), "cannot load the config file README.md (not Python: SyntaxError"
  )


@pytest.mark.slow
def test_train_disk_full_and_corrupt_data(tmp_path, data_dir):
  work = tmp_path / "run"
  train = ("--config=configs/digits.py", f"--workdir={work}", *SMALL, *NO_EVAL)
  full = _run(
    "rar-train", *train, "--config.train.steps=2", f"--config.data.dir={data_dir}",
    full=str(work / "checkpoints"), spare=(".write-probe",),  # Orbax's own writes fail
  )  # fmt: skip
  _one_error_line(
    full,
    f"no space left on device: a checkpoint could not be saved to {work / 'checkpoints'}; "
    "no checkpoint was written; free some space",
  )
  bad = str(tmp_path / "bad")
  shutil.copytree(data_dir, bad)
  shard = os.path.join(bad, records.read_metadata(bad).shards[0].file)
  with open(shard, "r+b") as f:
    f.write(np.random.default_rng(0).bytes(4096))  # over the first records
  corrupt = _run("rar-train", *train, f"--config.data.dir={bad}")
  _one_error_line(corrupt, f"shard {shard} is corrupt at record 0 (", "rar-pretokenize --verify")


@pytest.mark.slow
def test_pretokenize_disk_full_and_verify(tmp_path, data_dir):
  out = tmp_path / "out"
  lines = [f'{{"class_id": {i % 2}, "tokens": [0, 1, 2, 3]}}' for i in range(4)]
  (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
  full = _run(
    "rar-pretokenize", "--config=configs/pretokenize.py:jsonl",
    f"--config.path={tmp_path / 'x.jsonl'}",
    "--config.jsonl.seq_len=4", "--config.jsonl.codebook_size=8", "--config.jsonl.num_classes=2",
    f"--output_dir={out}", full=str(out),
  )  # fmt: skip
  _one_error_line(full, f"no space left on device writing {out}/", "free some space and rerun")
  bad = str(tmp_path / "bad")
  shutil.copytree(data_dir, bad)
  shard = records.read_metadata(bad).shards[1].file
  with open(os.path.join(bad, shard), "r+b") as f:
    f.seek(300)
    f.write(bytes(64))
  verify = _run("rar-pretokenize", "--verify", f"--output_dir={bad}")
  _one_error_line(verify, f"1 of 2 shards in {bad} are bad ({shard}; listed above)")
  assert verify.stdout.startswith(f"bad shard {os.path.join(bad, shard)}: ")


@pytest.mark.slow
def test_export_and_sample_errors(tmp_path, workdir):
  exported = os.path.join(workdir, "export")
  _one_error_line(
    _run("rar-export", f"--workdir={workdir}", f"--output={exported}"),
    f"export output {exported} already exists; pass --overwrite",
  )
  out = tmp_path / "exp"
  _one_error_line(
    _run(
      "rar-export", f"--workdir={workdir}", f"--output={out}", full=str(tmp_path), only=(".export",)
    ),
    f"no space left on device: the export to {out} could not be written; nothing was written",
  )
  assert list(tmp_path.iterdir()) == []  # no half-written export, no temporary
  samples = tmp_path / "samples"
  sample = ("--num_samples=16", "--batch_size=8")
  _one_error_line(
    _run("rar-sample", f"--export={tmp_path / 'none'}", f"--output={samples}", *sample),
    "export.json not found",
  )
  _one_error_line(
    _run(
      "rar-sample",
      f"--export={exported}",
      f"--output={samples}",
      *sample,
      full=str(samples / "chunks"),
    ),  # fmt: skip
    f"no space left on device: chunk 0 could not be written to {samples}/chunks/000000-p000.npz;"
    " the 0 finished chunks of 2 are kept",
  )


@pytest.mark.slow
def test_evaluate_with_a_missing_weights_file(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), np.uint8)
  np.savez(tmp_path / "s.npz", arr_0=images)
  _one_error_line(
    _run(
      "rar-evaluate",
      f"--samples={tmp_path / 's.npz'}",
      f"--reference={tmp_path / 's.npz'}",
      f"--inception_weights={tmp_path / 'missing.pth'}",
    ),  # fmt: skip
    f"input file(s) not found: --inception_weights={tmp_path / 'missing.pth'}",
  )
