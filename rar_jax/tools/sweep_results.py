"""The results of a sweep: each run's TensorBoard scalars and sample score, collected into
results.md, results.csv and a loss-per-step plot (`rar-sweep collect`)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from rar_jax import atomic_files
from rar_jax.tools import sweeps
from rar_jax.tools.sweeps import Point


@dataclasses.dataclass
class RunResult:
  """What one run's workdir holds: its scalars and an optional sample score."""

  name: str
  workdir: str
  overrides: Point
  steps: list[int]
  losses: list[float]
  final: dict[str, float]
  final_step: int | None
  sample: dict[str, Any]


def read_scalars(workdir: str, tags: Sequence[str] = ("loss", "accuracy")) -> dict[str, dict]:
  """{tag: {step: value}} of the TensorBoard event files directly in workdir. CLU writes
  through tf.summary, so scalars arrive as tensors; plain scalar events are read too. A later
  event of the same step (a resumed run) wins."""
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.util import tensor_util

  acc = ea.EventAccumulator(workdir, size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
  acc.Reload()
  available = acc.Tags()
  out: dict[str, dict[int, float]] = {}
  for tag in tags:
    values: dict[int, float] = {}
    if tag in available.get("scalars", []):
      for e in acc.Scalars(tag):
        values[int(e.step)] = float(e.value)
    if tag in available.get("tensors", []):
      for e in acc.Tensors(tag):
        values[int(e.step)] = float(tensor_util.make_ndarray(e.tensor_proto))
    out[tag] = dict(sorted(values.items()))
  return out


def _parse_name(name: str) -> Point:
  point = {}
  for part in name.split(","):
    key, sep, value = part.partition("=")
    if not sep:
      return {}
    point[key] = value
  return point


def _discover(base_workdir: str) -> list[tuple[str, str, Point]]:
  manifest = epath.Path(sweeps.join_path(base_workdir, sweeps.MANIFEST))
  if manifest.exists():
    runs = json.loads(manifest.read_text())["runs"]
    # Relative to where the sweep is now (it may have been copied since it ran).
    return [(r["name"], sweeps.join_path(base_workdir, r["name"]), r["overrides"]) for r in runs]
  found = []
  for path in sorted(epath.Path(base_workdir).iterdir(), key=lambda p: p.name):
    if path.is_dir() and (
      any("tfevents" in f.name for f in path.iterdir()) or (path / sweeps.SAMPLE_SCORE).exists()
    ):
      found.append((path.name, sweeps.join_path(base_workdir, path.name), _parse_name(path.name)))
  return found


def collect(base_workdir: str) -> list[RunResult]:
  """Reads every run of the sweep under base_workdir (listed by sweep.json, else every
  sub-directory with event files; overrides then come from the directory names)."""
  results = []
  for name, workdir, overrides in _discover(base_workdir):
    scalars = (
      read_scalars(workdir)
      if epath.Path(workdir).exists()
      else {"loss": {}, "accuracy": {}}  # not started
    )
    final = {tag: list(v.values())[-1] for tag, v in scalars.items() if v}
    loss = scalars.get("loss", {})
    steps = sorted({s for v in scalars.values() for s in v})
    sample: dict[str, Any] = {}
    score_path = epath.Path(sweeps.join_path(workdir, sweeps.SAMPLE_SCORE))
    if score_path.exists():
      sample = json.loads(score_path.read_text())
    results.append(
      RunResult(
        name=name,
        workdir=workdir,
        overrides=overrides,
        steps=list(loss),
        losses=list(loss.values()),
        final=final,
        final_step=steps[-1] if steps else None,
        sample=sample,
      )
    )
  return results


def _schedule(overrides: Mapping[str, Any]) -> str:
  def find(end: str) -> Any:
    for key, value in overrides.items():
      if key.split(".")[-1].startswith(f"anneal_{end}") and value not in (None, "None"):
        return value
    return None

  start, end = find("start"), find("end")
  if start is None and end is None:
    return ""
  return f"{sweeps.format_value(start)}/{sweeps.format_value(end)}"


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return "" if math.isnan(value) else f"{value:.4f}"
  return str(value)


def results_table(results: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
  """(header, rows): run, schedule (anneal start/end), the varying overrides, last step,
  final loss and accuracy, then sample_<key> for every key of any sample_score.json
  (sample_accuracy always; empty where a run has none)."""
  keys: list[str] = []
  for r in results:
    keys += [k for k in r.overrides if k not in keys]
  if len(results) > 1:
    keys = [k for k in keys if len({sweeps.format_value(r.overrides.get(k)) for r in results}) > 1]
  short = sweeps._short_keys(keys)
  sample_keys = ["accuracy"]
  for r in results:
    sample_keys += [k for k in r.sample if k not in sample_keys]
  header = ["run", "schedule", *(short[k] for k in keys), "step", "final_loss", "final_accuracy"]
  header += [f"sample_{k}" for k in sample_keys]
  rows = []
  for r in results:
    row = [r.name, _schedule(r.overrides)]
    row += [sweeps.format_value(r.overrides[k]) if k in r.overrides else "" for k in keys]
    row += [_cell(r.final_step), _cell(r.final.get("loss")), _cell(r.final.get("accuracy"))]
    row += [_cell(r.sample.get(k)) for k in sample_keys]
    rows.append(row)
  return header, rows


def markdown(base_workdir: str, header: list[str], rows: list[list[str]]) -> str:
  lines = [
    f"# Sweep results: {base_workdir}",
    "",
    "Final loss/accuracy are the last logged training values (teacher forcing, in the order",
    "the run trained on at that step: compare schedules that end in raster order among",
    "themselves). sample_* come from each run's sample_score.json.",
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
  ]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _plot(results: Sequence[RunResult], title: str) -> bytes:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  for r in results:
    if r.steps:
      schedule = _schedule(r.overrides)
      varied = [v for v in r.overrides.values() if v is not None]
      label = f"anneal {schedule}" if schedule and len(varied) <= 2 else r.name
      ax.plot(r.steps, r.losses, label=label, linewidth=1.2)
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  if any(r.steps for r in results):
    ax.legend(fontsize=7)
  buf = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  return buf.getvalue()


def write_results(base_workdir: str, results: Sequence[RunResult]) -> dict[str, str]:
  """Writes results.md, results.csv and loss.png into base_workdir; returns their paths."""
  header, rows = results_table(results)
  paths = {k: sweeps.join_path(base_workdir, k) for k in ("results.md", "results.csv", "loss.png")}
  atomic_files.write_text(paths["results.md"], markdown(base_workdir, header, rows))
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(header)
  writer.writerows(rows)
  atomic_files.write_text(paths["results.csv"], buf.getvalue())
  atomic_files.write_bytes(paths["loss.png"], _plot(results, base_workdir))
  return paths
