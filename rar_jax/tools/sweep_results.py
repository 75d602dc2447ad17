"""The results of a sweep: each run's TensorBoard scalars (training and held-out raster loss),
sample quality (sample_quality.json: FID or digits FID, IS) and sample score (class
consistency), collected into results.md, results.csv and loss.png, the held-out raster loss per
step of every run (`rar-sweep collect`). Runs are ranked by their last held-out
raster loss: the same order and data for every schedule, unlike the training loss."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from rar_jax.infra import atomic_files
from rar_jax.tools import sweeps
from rar_jax.tools.sweeps import Point

HELDOUT = "heldout_raster_loss"
TAGS = ("loss", "accuracy", HELDOUT, "heldout_raster_bits_per_token", "heldout_raster_accuracy")


@dataclasses.dataclass
class RunResult:
  """What one run's workdir holds: its scalars, sample quality and sample score (the last
  entry of sample_quality.json, sample_score.json; empty when absent)."""

  name: str
  workdir: str
  overrides: Point
  steps: list[int]
  losses: list[float]
  final: dict[str, float]
  final_step: int | None
  sample: dict[str, Any]
  heldout_steps: list[int] = dataclasses.field(default_factory=list)
  heldout_losses: list[float] = dataclasses.field(default_factory=list)
  quality: dict[str, Any] = dataclasses.field(default_factory=dict)


def read_scalars(workdir: str, tags: Sequence[str] = TAGS) -> dict[str, dict]:
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
      else {tag: {} for tag in TAGS}  # not started
    )
    final = {tag: list(v.values())[-1] for tag, v in scalars.items() if v}
    loss = scalars.get("loss", {})
    steps = sorted({s for v in scalars.values() for s in v})
    sample = _read_json(sweeps.join_path(workdir, sweeps.SAMPLE_SCORE), {})
    quality = _read_json(sweeps.join_path(workdir, sweeps.SAMPLE_QUALITY), [])
    heldout = scalars.get(HELDOUT, {})
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
        heldout_steps=list(heldout),
        heldout_losses=list(heldout.values()),
        quality=quality[-1] if quality else {},
      )
    )
  return results


def _read_json(path: str, default: Any) -> Any:
  """The JSON in path, or default when there is no such file (the run has not written it)."""
  file = epath.Path(path)
  return json.loads(file.read_text()) if file.exists() else default


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


def _rank_key(r: RunResult) -> tuple[bool, float]:
  heldout = r.final.get(HELDOUT)
  return (heldout is None, heldout if heldout is not None else 0.0)


def results_table(results: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
  """(header, rows), best held-out raster loss first (runs without one last, in their order):
  rank, run, schedule (anneal start/end), the varying overrides, last step, held-out raster
  loss / bits per token / accuracy, fid and inception_score (sample_quality.json; fid is the
  digits FID for digits runs), sample_<key> of every key of any sample_score.json
  (sample_accuracy always), then the last training loss and accuracy."""
  keys: list[str] = []
  for r in results:
    keys += [k for k in r.overrides if k not in keys]
  if len(results) > 1:
    keys = [k for k in keys if len({sweeps.format_value(r.overrides.get(k)) for r in results}) > 1]
  short = sweeps._short_keys(keys)
  sample_keys = ["accuracy"]
  for r in results:
    sample_keys += [k for k in r.sample if k not in sample_keys]
  quality_keys = ["fid"] + (
    ["inception_score"] if any("inception_score" in r.quality for r in results) else []
  )
  header = ["rank", "run", "schedule", *(short[k] for k in keys), "step"]
  header += ["heldout_raster_loss", "heldout_bits_per_token", "heldout_raster_accuracy"]
  header += quality_keys + [f"sample_{k}" for k in sample_keys]
  header += ["final_loss", "final_accuracy"]
  rows = []
  for rank, r in enumerate(sorted(results, key=_rank_key), start=1):
    row = [str(rank) if HELDOUT in r.final else "", r.name, _schedule(r.overrides)]
    row += [sweeps.format_value(r.overrides[k]) if k in r.overrides else "" for k in keys]
    row += [_cell(r.final_step)]
    row += [_cell(r.final.get(t)) for t in TAGS[2:]]
    row += [_cell(r.quality.get(k)) for k in quality_keys]
    row += [_cell(r.sample.get(k)) for k in sample_keys]
    row += [_cell(r.final.get("loss")), _cell(r.final.get("accuracy"))]
    rows.append(row)
  return header, rows


def markdown(base_workdir: str, header: list[str], rows: list[list[str]]) -> str:
  lines = [
    f"# Sweep results: {base_workdir}",
    "",
    "Ranked by the last held-out raster loss (teacher forcing in raster order, the sampler's,",
    "on the data set's validation split; bits per token = loss / ln 2). fid: FID of the run's",
    "samples (sample_quality.json; the digits FID for digits runs); sample_*: class",
    "consistency (sample_score.json). final_loss/accuracy are the last training values, in the",
    "order the run trained on at that step: not comparable across schedules.",
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

  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  for r in results:
    schedule = _schedule(r.overrides)
    varied = [v for v in r.overrides.values() if v is not None]
    label = f"anneal {schedule}" if schedule and len(varied) <= 2 else r.name
    axes[0].plot(r.heldout_steps, r.heldout_losses, label=label, linewidth=1.2, marker=".")
    axes[1].plot(r.steps, r.losses, label=label, linewidth=1.0)
  axes[0].set_ylabel("held-out raster loss")
  axes[1].set_ylabel("training loss (the order trained on)")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines and any(len(line.get_xdata()) for line in ax.lines):
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
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
