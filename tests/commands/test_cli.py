"""Every command answers --help: the console scripts of setup.cfg (through their entry
functions, since the editable install may point at another checkout) and every
`python -m rar_jax...` module the README and docs/ name, plus launch/sweep.py."""

import ast
import configparser
import os
import pathlib
import re
import subprocess
import sys

import pytest

import tests

ROOT = pathlib.Path(tests.__file__).resolve().parent.parent  # wherever this file sits

# Each command and a flag its help must list: the command modules, and the library modules whose
# `python -m` runs their command (the names the docs and earlier releases use).
COMMANDS = {
  "rar_jax.main": "--workdir",
  "rar_jax.commands.pretokenize": "--output_dir",
  "rar_jax.commands.holdout": "--count",
  "rar_jax.commands.export": "--official",
  "rar_jax.commands.sample": "--num_samples",
  "rar_jax.commands.evaluate": "--reference",
  "rar_jax.commands.plan": "--topology",
  "rar_jax.commands.bench": "--batch",
  "rar_jax.commands.sweep": "collect",
  "rar_jax.commands.xpk_sweep": "--prefix",
  "rar_jax.commands.kernel_cost_check": "--topology",
  "rar_jax.data.pretokenize": "--output_dir",
  "rar_jax.data.holdout": "--count",
  "rar_jax.sampling.export": "--official",
  "rar_jax.sampling.sample": "--num_samples",
  "rar_jax.evaluation.evaluate": "--reference",
  "rar_jax.tools.plan": "--topology",
  "rar_jax.tools.bench": "--batch",
}
SCRIPTS = {
  "rar-train": "rar_jax.main",
  "rar-pretokenize": "rar_jax.commands.pretokenize",
  "rar-holdout": "rar_jax.commands.holdout",
  "rar-sample": "rar_jax.commands.sample",
  "rar-export": "rar_jax.commands.export",
  "rar-evaluate": "rar_jax.commands.evaluate",
  "rar-plan": "rar_jax.commands.plan",
  "rar-bench": "rar_jax.commands.bench",
  "rar-sweep": "rar_jax.commands.sweep",
}


def _console_scripts() -> dict[str, str]:
  """name -> "module:function" from setup.cfg."""
  parser = configparser.ConfigParser()
  parser.read(ROOT / "setup.cfg")
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def _documented_modules() -> set[str]:
  texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
  found = set()
  for path in texts:
    found |= set(re.findall(r"python -m (rar_jax(?:\.\w+)+)", path.read_text()))
  return found


@pytest.mark.slow
def test_console_scripts_point_at_the_commands():
  scripts = _console_scripts()
  assert {name: target.split(":")[0] for name, target in scripts.items()} == SCRIPTS
  for target in scripts.values():  # read, not imported: each command defines its own flags
    module, function = target.split(":")
    source = ROOT / (module.replace(".", "/") + ".py")
    defined = {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert function in defined, target


def test_every_documented_module_is_tested():
  assert _documented_modules() <= set(COMMANDS)


def _help(*args: str) -> subprocess.CompletedProcess:
  """Runs this interpreter with args + --help from the repository root."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.run(
    [sys.executable, *args, "--help"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def _check(proc: subprocess.CompletedProcess, flag: str) -> None:
  out = proc.stdout + proc.stderr
  assert "Traceback" not in out, out
  assert proc.returncode in (0, 1), out  # absl's --help exits with 1
  assert flag in out, out


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_module_answers_help(module):
  _check(_help("-m", module), COMMANDS[module])


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_answers_help(script):
  module, function = _console_scripts()[script].split(":")
  code = f"import sys; sys.argv[0] = {script!r}; from {module} import {function}; {function}()"
  _check(_help("-c", code), COMMANDS[module])


@pytest.mark.slow
def test_sweep_launcher_answers_help():
  _check(_help("launch/sweep.py"), "collect")


# ---------------------------------------------------------------------------------------------
# User errors: one line on stderr, `error: ...`, exit status 2 (rar_jax/infra/user_errors.py).


def _command(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  """Runs this interpreter with args from the repository root (CPU only)."""
  inherited = {k: v for k, v in os.environ.items() if k != "RAR_TRACEBACK"}
  env = {**inherited, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env or {})}
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
  """The command failed with status 2 and printed exactly one line naming every needle."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  for needle in needles:
    assert needle in lines[0], lines[0]


TRAIN = ("-m", "rar_jax.main", "--config=configs/digits.py")


@pytest.mark.slow
@pytest.mark.parametrize(
  "override, needles",
  [
    ("--config.train.nosuch=3", ("unknown config key 'nosuch'", "--config.train.nosuch=3")),
    ("--config.optim.lr=-1", ("optim.lr must be > 0, got -1.0",)),
    ("--config.optim.b2=1.5", ("optim.b2 must be in [0, 1), got 1.5",)),
    ("--config.randomness.label_dropout=1.5", ("randomness.label_dropout", "1.5")),
    ("--config.randomness.anneal_start_steps=-5", ("randomness.anneal_start_steps", "-5")),
    ("--config.sampling.guidance_scale=-2", ("sampling.guidance_scale must be >= 0", "-2.0")),
    ("--config.train.steps=abc", ("--config.train.steps=abc",)),
  ],
)
def test_training_user_errors_print_one_line(tmp_path, override, needles):
  proc = _command(*TRAIN, override, f"--workdir={tmp_path / 'w'}")
  assert_one_line_error(proc, *needles)


@pytest.mark.slow
def test_traceback_on_request(tmp_path):
  args = (*TRAIN, "--config.optim.lr=-1", f"--workdir={tmp_path / 'w'}")
  for env, extra in (({"RAR_TRACEBACK": "1"}, ()), ({}, ("--verbosity=1",))):
    proc = _command(*args, *extra, env=env)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "optim.lr must be > 0" in proc.stderr


@pytest.mark.slow
def test_empty_jsonl_is_named_in_one_line(tmp_path):
  (tmp_path / "empty.jsonl").write_text("")
  proc = _command(
    "-m",
    "rar_jax.data.pretokenize",
    "--config=configs/pretokenize.py:jsonl",
    f"--config.path={tmp_path / 'empty.jsonl'}",
    f"--output_dir={tmp_path / 'out'}",
  )
  assert_one_line_error(proc, f"{tmp_path / 'empty.jsonl'} is empty")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["float", "corrupt", "unit_uint8"])
def test_bad_samples_file_is_named_in_one_line(tmp_path, kind):
  import numpy as np  # noqa: PLC0415

  images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), np.uint8)
  np.savez(tmp_path / "ref.npz", arr_0=images)
  samples = tmp_path / "samples.npz"
  if kind == "float":
    np.savez(samples, arr_0=images / 255.0)
  elif kind == "unit_uint8":
    np.savez(samples, arr_0=(images / 255.0).round().astype(np.uint8))
  else:
    np.savez(samples, arr_0=images)
    samples.write_bytes(samples.read_bytes()[:-30])  # the zip directory is cut off
  (tmp_path / "w.pth").write_bytes(b"not read: the samples are checked first")
  proc = _command(
    "-m",
    "rar_jax.evaluation.evaluate",
    f"--samples={samples}",
    f"--reference={tmp_path / 'ref.npz'}",
    f"--inception_weights={tmp_path / 'w.pth'}",
  )
  want = {"float": "dtype float64", "corrupt": "corrupt .npz", "unit_uint8": "values 0 and 1"}
  assert_one_line_error(proc, str(samples), want[kind])
