"""Hyper-parameter sweeps in the big_vision / MaskGIT `get_hyper` style, and their results.

A config file may define, next to `get_config(arg)`,

  def get_hyper(h):
    return h.product([
      h.sweep("config.optim.lr", [1e-4, 4e-4]),
      h.zipit([
        h.sweep("config.randomness.anneal_start_fraction", [0.0, 0.5]),
        h.sweep("config.randomness.anneal_end_fraction", [0.0, 0.75]),
      ]),
      h.fixed("config.train.steps", 1000),
    ])

which expands into a list of points (dicts of override key -> value; the "config." prefix is
optional and dropped). Every point becomes one run of `rar_jax.main` with those overrides in
`<base_workdir>/<name>`, the name derived from the keys that vary across the sweep;
`sweep_results.collect` reads the runs back into results.md, results.csv and loss.png.

The command line (run / collect) is `rar_jax.commands.sweep` (`rar-sweep`, `launch/sweep.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from etils import epath

from rar_jax.infra import atomic_files, paths, user_errors

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
MANIFEST = "sweep.json"
SAMPLE_SCORE = "sample_score.json"  # training.previews.SCORE_FILE
SAMPLE_QUALITY = "sample_quality.json"  # training.sample_eval.QUALITY_FILE
# What precedes the rar_jax.main arguments in each mode; tpu/gpu also get WORKDIR=<workdir>.
LAUNCHERS: dict[str, tuple[str, ...]] = {
  "tpu": ("bash", "launch/tpu.sh", "train", "--"),
  "gpu": ("bash", "launch/gpu.sh", "single", "--"),
}
MODES = ("print", "local", "tpu", "gpu")
_MAX_NAME = 120
_SAFE = re.compile(r"[^A-Za-z0-9._=,+-]")

Point = dict[str, Any]


# ------------------------------------------------------------------------------------------------
# The `h` shim


def _key(key: str) -> str:
  if not isinstance(key, str) or not key:
    raise ValueError(f"a sweep key must be a non-empty string, got {key!r}")
  return key.removeprefix("config.")


class Hyper:
  """The object handed to `get_hyper(h)`: builds sweeps as lists of points."""

  @staticmethod
  def sweep(key: str, values: Iterable[Any]) -> list[Point]:
    """One point per value of `key`."""
    values = list(values)
    if not values:
      raise ValueError(f"h.sweep({key!r}, []) has no values")
    return [{_key(key): v} for v in values]

  @staticmethod
  def fixed(key: str, value: Any) -> list[Point]:
    """A single point: `key` set to `value` (combine with product to set it everywhere)."""
    return [{_key(key): value}]

  @staticmethod
  def product(sweeps: Sequence[list[Point]]) -> list[Point]:
    """The cartesian product; the first sweep varies slowest."""
    points: list[Point] = [{}]
    for sweep in sweeps:
      points = [_merge(a, b, "product") for a in points for b in sweep]
    return points

  @staticmethod
  def zipit(sweeps: Sequence[list[Point]]) -> list[Point]:
    """Pairs the sweeps element-wise; they must have equal lengths (length 1 broadcasts)."""
    sweeps = list(sweeps)
    if not sweeps:
      return [{}]
    lengths = {len(s) for s in sweeps} - {1}
    if len(lengths) > 1:
      raise ValueError(f"h.zipit needs sweeps of equal length, got {[len(s) for s in sweeps]}")
    n = lengths.pop() if lengths else 1
    points = []
    for i in range(n):
      point: Point = {}
      for sweep in sweeps:
        point = _merge(point, sweep[0 if len(sweep) == 1 else i], "zipit")
      points.append(point)
    return points


def _merge(a: Point, b: Point, what: str) -> Point:
  both = sorted(set(a) & set(b))
  if both:
    raise ValueError(f"h.{what} sets config.{both[0]} twice")
  return {**a, **b}


# ------------------------------------------------------------------------------------------------
# Config files


def split_config_spec(spec: str) -> tuple[str, str | None]:
  """ "configs/imagenet.py:XL" -> ("configs/imagenet.py", "XL")."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def load_config_module(spec: str) -> Any:
  """Imports the config file of `spec` (with the repo root importable, as rar_jax.main has)."""
  path, _ = split_config_spec(spec)
  file = pathlib.Path(path)
  if not file.is_file() and (REPO_ROOT / path).is_file():
    file = REPO_ROOT / path
  if not file.is_file():
    raise FileNotFoundError(f"config file {path!r} not found")
  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
  name = "_rar_sweep_config_" + re.sub(r"\W", "_", file.stem)
  loader = importlib.machinery.SourceFileLoader(name, str(file))  # whatever the suffix
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
  try:
    loader.exec_module(module)
  except Exception as err:  # noqa: BLE001 - the user's file: any error is theirs
    raise ValueError(user_errors.config_file_error(path, err)) from err
  return module


def expand(spec: str) -> list[Point]:
  """The points of the config's `get_hyper` (one empty point when it has none)."""
  module = load_config_module(spec)
  get_hyper = getattr(module, "get_hyper", None)
  if get_hyper is None:
    return [{}]
  _, arg = split_config_spec(spec)
  takes_arg = len(inspect.signature(get_hyper).parameters) > 1
  points = get_hyper(Hyper(), arg) if takes_arg else get_hyper(Hyper())
  points = [dict(p) for p in points]
  if not points:
    raise ValueError(f"{spec}: get_hyper returned no points")
  return points


# ------------------------------------------------------------------------------------------------
# Names and commands


def format_value(value: Any) -> str:
  """A value as config_flags parses it on the command line (and as names show it)."""
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
  """Each dotted key's shortest suffix that no other key shares."""
  short = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      suffix = ".".join(parts[-n:])
      if not any(other != key and other.endswith(suffix) for other in keys):
        break
    short[key] = suffix
  return short


def _name_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return "x".join(_name_value(v) for v in value)
  return format_value(value)


def _digest(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()


def _safe(text: str) -> str:
  text = _SAFE.sub("_", text)
  text = text.lstrip(".-") or "_"
  if len(text) > _MAX_NAME:
    text = text[: _MAX_NAME - 9] + "-" + _digest(text)[:8]
  return text


def point_names(points: Sequence[Point]) -> list[str]:
  """Short, filesystem-safe, deterministic, unique names, from the keys that vary.

  E.g. "anneal_start_fraction=0.5,anneal_end_fraction=0.75"; a sweep of one point is named
  by all its keys, an empty one "default".
  """
  keys: list[str] = []
  for point in points:
    keys += [k for k in point if k not in keys]
  varying = [k for k in keys if len({repr(p.get(k)) for p in points}) > 1]
  shown = varying if len(points) > 1 else keys
  short = _short_keys(shown)
  names = []
  for point in points:
    parts = [f"{short[k]}={_name_value(point[k])}" for k in shown if k in point]
    names.append(_safe(",".join(parts)) if parts else "default")
  seen: dict[str, int] = {}
  for name in names:
    seen[name] = seen.get(name, 0) + 1
  if any(count > 1 for count in seen.values()):  # values that differ only in unsafe characters
    names = [
      n if seen[n] == 1 else f"{n}-{_digest(repr(sorted(p.items())))[:6]}"
      for n, p in zip(names, points, strict=True)
    ]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep points are not distinct: {names}")
  return names


def join_path(base: str, name: str) -> str:
  return base.rstrip("/") + "/" + name


@dataclasses.dataclass(frozen=True)
class Run:
  """One point of a sweep: its name, workdir, overrides and rar_jax.main arguments."""

  name: str
  workdir: str
  overrides: Point
  main_args: tuple[str, ...]


def main_args(spec: str, workdir: str, overrides: Mapping[str, Any], extra: Sequence[str] = ()):
  """The rar_jax.main argument list of one run. None values are left out: config_flags cannot
  parse None, and validate() checks that such a key is None in the config already."""
  args = [f"--config={spec}", f"--workdir={workdir}"]
  args += [f"--config.{k}={format_value(v)}" for k, v in overrides.items() if v is not None]
  return tuple(args) + tuple(extra)


def normalize_spec(spec: str) -> str:
  """The config path relative to the repo root when it lies inside it (commands run there)."""
  path, arg = split_config_spec(spec)
  file = pathlib.Path(path)
  if not file.is_file() and (REPO_ROOT / path).is_file():
    file = REPO_ROOT / path
  file = file.resolve()
  if file.is_relative_to(REPO_ROOT):
    path = str(file.relative_to(REPO_ROOT))
  else:
    path = str(file)
  return path + (f":{arg}" if arg is not None else "")


def plan_sweep(spec: str, base_workdir: str, extra: Sequence[str] = ()) -> list[Run]:
  """Expands the config's sweep into runs under base_workdir (made absolute when local: the
  commands run from the repo root)."""
  spec = normalize_spec(spec)
  base_workdir = paths.absolute(base_workdir)
  points = expand(spec)
  names = point_names(points)
  runs = []
  for name, point in zip(names, points, strict=True):
    workdir = join_path(base_workdir, name)
    runs.append(Run(name, workdir, point, main_args(spec, workdir, point, extra)))
  return runs


def validate(spec: str, runs: Sequence[Run]) -> None:
  """Parses every run's arguments exactly as rar_jax.main will, and resolves its annealing
  schedule, so a bad key or value fails here rather than on the N-th machine.

  Raises:
    ValueError: naming the run and the problem.
  """
  from absl import flags
  from ml_collections import config_flags

  from rar_jax.training import randomization

  if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
  path, arg = split_config_spec(spec)
  path = str(REPO_ROOT / path)  # absolute or relative to the repo root (normalize_spec)
  base = load_config_module(spec).get_config(arg)
  for run in runs:
    for key, value in run.overrides.items():
      if value is None:
        try:
          current = base
          for part in key.split("."):
            current = current[part]
        except (KeyError, AttributeError) as e:
          raise ValueError(f"run {run.name}: config has no key {key}") from e
        if current is not None:
          raise ValueError(
            f"run {run.name}: config.{key} is {current!r} in the config and None cannot be "
            "given on the command line; set it to None in get_config instead"
          )
    args = [a for a in run.main_args if a.startswith("--config")]
    argv = ["sweep", f"--config={path}" + (f":{arg}" if arg is not None else ""), *args[1:]]
    values = flags.FlagValues()
    try:
      config_flags.DEFINE_config_file(
        "config", None, "", flag_values=values, lock_config=True, sys_argv=argv
      )
      values(argv)
      config = values.config
      start, end = randomization.anneal_steps(config.randomness, config.train.steps)
    except Exception as e:  # noqa: BLE001 (flags raise several types; report them all alike)
      raise ValueError(f"run {run.name}: {e}") from e
    if end > config.train.steps:
      print(
        f"warning: run {run.name}: the anneal ends at step {end}, after train.steps="
        f"{config.train.steps} (steps-valued anneal points do not scale with train.steps)",
        file=sys.stderr,
      )


def command(run: Run, mode: str, python: str = "python") -> tuple[list[str], dict[str, str]]:
  """(argv, extra environment) of a run in a mode."""
  if mode in ("local", "print"):
    return [python, "-m", "rar_jax.main", *run.main_args], {}
  if mode in LAUNCHERS:
    return [*LAUNCHERS[mode], *run.main_args], {"WORKDIR": run.workdir}
  raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")


def format_command(argv: Sequence[str], env: Mapping[str, str]) -> str:
  prefix = [f"{k}={shlex.quote(v)}" for k, v in env.items()]
  return " ".join(prefix + [shlex.join(argv)])


def write_manifest(base_workdir: str, spec: str, runs: Sequence[Run], mode: str) -> str:
  """<base>/sweep.json: what collect reads to know the runs and their overrides."""
  manifest = {
    "config": spec,
    "mode": mode,
    "runs": [
      {"name": r.name, "workdir": r.workdir, "overrides": r.overrides, "args": list(r.main_args)}
      for r in runs
    ],
  }
  path = join_path(base_workdir, MANIFEST)
  epath.Path(base_workdir).mkdir(parents=True, exist_ok=True)
  atomic_files.write_text(path, json.dumps(manifest, indent=2, default=str))
  return path


def run_sweep(
  spec: str,
  base_workdir: str,
  mode: str,
  *,
  execute: bool = False,
  extra: Sequence[str] = (),
  only: str | None = None,
  keep_going: bool = False,
  python: str | None = None,
  out: TextIO | None = None,
) -> int:
  """Prints (print; tpu/gpu without execute) or runs (local; tpu/gpu with execute) a sweep.

  Returns:
    The number of runs that failed (0 when only printing).
  """
  out = out or sys.stdout
  spec = normalize_spec(spec)
  base_workdir = paths.absolute(base_workdir)
  all_runs = runs = plan_sweep(spec, base_workdir, extra)
  if only:
    runs = [r for r in runs if only in r.name]
    if not runs:
      raise ValueError(f"--only={only!r} matches no run")
  validate(spec, runs)
  python = python or ("python" if mode == "print" else sys.executable)
  commands = [command(r, mode, python) for r in runs]
  run_it = mode == "local" or (mode in LAUNCHERS and execute)
  if not run_it:
    for argv, env in commands:
      print(format_command(argv, env), file=out)
    return 0
  write_manifest(base_workdir, spec, all_runs, mode)  # all of them: collect shows every run
  failed = []
  for i, (run, (argv, env)) in enumerate(zip(runs, commands, strict=True)):
    print(f"[{i + 1}/{len(runs)}] {run.name}\n  {format_command(argv, env)}", file=out, flush=True)
    rc = subprocess.run(argv, env={**os.environ, **env}, cwd=REPO_ROOT, check=False).returncode
    if rc:
      failed.append(run.name)
      print(f"  FAILED with exit code {rc}", file=out, flush=True)
      if not keep_going:
        break
  if failed:
    print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=out)
  return len(failed)
