"""Sweeps: the get_hyper shim, run names, commands, the shipped sweeps and collect."""

import csv
import io
import json
import re
import subprocess
import sys

import pytest

from rar_jax.tools import sweep_results, sweeps
from rar_jax.tools.sweeps import Hyper

ROOT = sweeps.REPO_ROOT
SAFE = re.compile(r"^[A-Za-z0-9._=,+-]+$")


def test_product_zipit_fixed():
  h = Hyper()
  points = h.product(
    [
      h.sweep("config.optim.lr", [1e-4, 4e-4]),
      h.zipit([h.sweep("config.a.x", [1, 2]), h.sweep("a.y", ["p", "q"]), h.fixed("a.z", 0)]),
      h.fixed("config.train.steps", 10),
    ]
  )
  assert points == [
    {"optim.lr": 1e-4, "a.x": 1, "a.y": "p", "a.z": 0, "train.steps": 10},
    {"optim.lr": 1e-4, "a.x": 2, "a.y": "q", "a.z": 0, "train.steps": 10},
    {"optim.lr": 4e-4, "a.x": 1, "a.y": "p", "a.z": 0, "train.steps": 10},
    {"optim.lr": 4e-4, "a.x": 2, "a.y": "q", "a.z": 0, "train.steps": 10},
  ]
  assert h.product([]) == [{}]
  with pytest.raises(ValueError, match="equal length"):
    h.zipit([h.sweep("a", [1, 2]), h.sweep("b", [1, 2, 3])])
  with pytest.raises(ValueError, match="config.a twice"):
    h.product([h.sweep("a", [1]), h.fixed("config.a", 2)])
  with pytest.raises(ValueError, match="no values"):
    h.sweep("a", [])


def test_names_unique_safe_deterministic():
  h = Hyper()
  points = h.product(
    [
      h.sweep("randomness.anneal_start_fraction", [0.0, 0.5]),
      h.sweep("mesh.shape", [(-1, 1, 1), (8, 4, 1)]),
      h.sweep("data.dir", ["gs://b/x y", "gs://b/x:y"]),  # equal once made safe
      h.fixed("train.steps", 7),  # fixed: not in the names
    ]
  )
  names = sweeps.point_names(points)
  assert names == sweeps.point_names(points)
  assert len(set(names)) == len(names) == 8
  assert all(SAFE.match(n) and len(n) <= 120 for n in names)
  assert names[0].startswith("anneal_start_fraction=0.0,shape=-1x1x1,dir=gs_")
  assert "steps" not in names[0]
  # Ambiguous last components get a longer suffix; one point is named by all its keys.
  assert sweeps.point_names([{"a.lr": 1, "b.lr": 2}]) == ["a.lr=1,b.lr=2"]
  assert sweeps.point_names([{}]) == ["default"]
  long = sweeps.point_names([{"k": "v" * 300}, {"k": "w" * 300}])
  assert all(len(n) <= 120 for n in long) and long[0] != long[1]


def test_print_mode_commands(tmp_path):
  out = io.StringIO()
  failed = sweeps.run_sweep("configs/digits_sweep.py", str(tmp_path), "print", out=out)
  lines = out.getvalue().splitlines()
  assert failed == 0 and len(lines) == 6
  assert lines[2] == (
    "python -m rar_jax.main --config=configs/digits_sweep.py "
    f"--workdir={tmp_path}/anneal_start_fraction=0.5,anneal_end_fraction=0.75,seed=0 "
    "--config.randomness.anneal_start_fraction=0.5 --config.randomness.anneal_end_fraction=0.75 "
    "--config.seed=0"
  )
  assert lines[5].endswith("--config.randomness.anneal_end_fraction=0.75 --config.seed=1")
  assert list(tmp_path.iterdir()) == []  # printing writes nothing

  out = io.StringIO()
  sweeps.run_sweep(
    "configs/digits_sweep.py", "gs://b/sw", "tpu", extra=["--config.train.steps=7"], out=out
  )
  first = out.getvalue().splitlines()[0]
  wd = "gs://b/sw/anneal_start_fraction=0.0,anneal_end_fraction=0.0,seed=0"
  assert first.startswith(f"WORKDIR={wd} bash launch/tpu.sh train -- --config=")
  assert f" --workdir={wd} --config.randomness.anneal_start_fraction=0.0 " in first
  assert first.endswith("--config.seed=0 --config.train.steps=7")
  gpu = sweeps.command(sweeps.plan_sweep("configs/digits_sweep.py", "gs://b/sw")[0], "gpu")
  assert gpu[0][:4] == ["bash", "launch/gpu.sh", "single", "--"]


def test_sweep_script_print_mode(tmp_path):
  result = subprocess.run(
    [sys.executable, "launch/sweep.py", "run", "--config=configs/digits_sweep.py"]
    + [f"--workdir={tmp_path}", "--mode=print"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  lines = result.stdout.splitlines()
  assert len(lines) == 6 and all(ln.startswith("python -m rar_jax.main") for ln in lines)


def test_validate_rejects_bad_overrides():
  spec = "configs/digits_sweep.py"

  def run(**overrides):
    return sweeps.Run("r", "/tmp/r", overrides, sweeps.main_args(spec, "/tmp/r", overrides))

  sweeps.validate(spec, [run(**{"randomness.anneal_start_steps": None})])  # None already
  with pytest.raises(ValueError, match="no_such_key"):
    sweeps.validate(spec, [run(**{"optim.no_such_key": 1})])
  with pytest.raises(ValueError, match="None cannot be given"):
    sweeps.validate(spec, [run(**{"optim.lr": None})])
  with pytest.raises(ValueError, match="before its start"):
    args = {"randomness.anneal_start_fraction": 0.9, "randomness.anneal_end_fraction": 0.1}
    sweeps.validate(spec, [run(**args)])


def test_imagenet_ablation_pairs():
  points = sweeps.expand("configs/imagenet.py:B")
  pairs = {
    (
      round(p["randomness.anneal_start_fraction"] * 400),
      round(p["randomness.anneal_end_fraction"] * 400),
    )
    for p in points
  }  # epochs of the 400-epoch schedule
  assert {(0, 0), (400, 400), (100, 100), (200, 300)} <= pairs
  assert pairs == {(s, e) for s in range(0, 401, 100) for e in range(s, 401, 100)}
  assert len(points) == len(pairs) == 15
  runs = sweeps.plan_sweep("configs/imagenet.py:B", "gs://b/abl")
  assert len({r.workdir for r in runs}) == len(runs)
  sweeps.validate("configs/imagenet.py:B", runs)  # every command parses as rar_jax.main's


def _fake_run(workdir, losses, accuracies, score=None, heldout=(), fid=None):
  from clu import metric_writers

  writer = metric_writers.create_default_writer(str(workdir), asynchronous=False)
  for step, (loss, acc) in enumerate(zip(losses, accuracies, strict=True), start=1):
    writer.write_scalars(step * 10, {"loss": loss, "accuracy": acc, "learning_rate": 1e-3})
  for step, loss in enumerate(heldout, start=1):
    writer.write_scalars(step * 15, {"heldout_raster_loss": loss})
  writer.flush()
  writer.close()
  if score is not None:
    (workdir / sweeps.SAMPLE_SCORE).write_text(json.dumps(score))
  if fid is not None:
    quality = [{"step": 15, "fid": fid + 1.0}, {"step": 30, "fid": fid}]
    (workdir / sweeps.SAMPLE_QUALITY).write_text(json.dumps(quality))


@pytest.mark.parametrize("with_manifest", [True, False])
def test_collect_ranks_by_heldout_loss_and_writes_md_csv_png(tmp_path, with_manifest):
  runs = sweeps.plan_sweep("configs/digits_sweep.py", str(tmp_path))[:3]
  _fake_run(
    tmp_path / runs[0].name, [3.0, 2.0, 1.5], [0.1, 0.2, 0.25], {"accuracy": 0.875}, (2.5, 2.0)
  )
  _fake_run(tmp_path / runs[1].name, [3.0, 2.5, 2.25], [0.1, 0.15, 0.125], None, (2.0, 1.75), 4.5)
  if with_manifest:  # the third run never started: an empty row, last
    sweeps.write_manifest(str(tmp_path), "configs/digits_sweep.py", runs, "local")
  results = sweep_results.collect(str(tmp_path))
  assert [r.name for r in results] == [r.name for r in runs[: 3 if with_manifest else 2]]
  assert results[0].steps == [10, 20, 30] and results[0].losses == [3.0, 2.0, 1.5]
  assert results[1].heldout_steps == [15, 30] and results[1].heldout_losses == [2.0, 1.75]

  paths = sweep_results.write_results(str(tmp_path), results)
  with open(paths["results.csv"]) as f:
    rows = list(csv.DictReader(f))
  # Ranked by the last held-out raster loss: 1.75 (random only) before 2.0 (raster only).
  assert [r["rank"] for r in rows[:2]] == ["1", "2"]
  assert rows[0]["schedule"] == "1.0/1.0" and rows[1]["schedule"] == "0.0/0.0"
  assert rows[1]["anneal_start_fraction"] == "0.0"
  assert float(rows[0]["heldout_raster_loss"]) == 1.75 and float(rows[0]["fid"]) == 4.5
  assert float(rows[1]["heldout_raster_loss"]) == 2.0 and rows[1]["fid"] == ""
  assert float(rows[1]["final_loss"]) == 1.5 and float(rows[1]["final_accuracy"]) == 0.25
  assert float(rows[0]["final_loss"]) == 2.25 and rows[0]["step"] == "30"
  assert float(rows[1]["sample_accuracy"]) == 0.875 and rows[0]["sample_accuracy"] == ""
  if with_manifest:
    assert rows[2]["final_loss"] == rows[2]["rank"] == "" and rows[2]["schedule"] == "0.5/0.75"
  md = (tmp_path / "results.md").read_text()
  assert "| rank | run | schedule |" in md and "| 1.7500 |" in md
  assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_mode_runs_each_point_and_writes_manifest(tmp_path):
  out = io.StringIO()
  spec = "configs/digits_sweep.py"
  assert sweeps.run_sweep(spec, str(tmp_path), "local", python="true", out=out) == 0
  manifest = json.loads((tmp_path / sweeps.MANIFEST).read_text())
  assert [r["name"] for r in manifest["runs"]] == [r.name for r in sweeps.plan_sweep(spec, "x")]
  assert out.getvalue().count("true -m rar_jax.main --config=configs/digits_sweep.py") == 6
  # A failing run stops the sweep unless keep_going.
  assert sweeps.run_sweep(spec, str(tmp_path), "local", python="false", out=io.StringIO()) == 1
  failed = sweeps.run_sweep(
    spec, str(tmp_path), "local", python="false", keep_going=True, only="0.0", out=io.StringIO()
  )
  assert failed == 2  # (0.0, 0.0) and (0.0, 1.0), seed 0
