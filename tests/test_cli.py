"""Every command answers --help: the console scripts of setup.cfg (through their entry
functions, since the editable install may point at another checkout) and every
`python -m rar_jax...` module the README and docs/ name, plus launch/sweep.py."""

import configparser
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

import tests

ROOT = pathlib.Path(tests.__file__).resolve().parent.parent  # wherever this file sits

# Each command and a flag its help must list.
COMMANDS = {
  "rar_jax.main": "--workdir",
  "rar_jax.data.pretokenize": "--output_dir",
  "rar_jax.data.holdout": "--count",
  "rar_jax.sampling.export": "--official",
  "rar_jax.sampling.sample": "--num_samples",
  "rar_jax.evaluation.evaluate": "--reference",
  "rar_jax.tools.plan": "--topology",
  "rar_jax.tools.bench": "--batch",
  "rar_jax.tools.sweep_cli": "collect",
}
SCRIPTS = {
  "rar-train": "rar_jax.main",
  "rar-pretokenize": "rar_jax.data.pretokenize",
  "rar-sample": "rar_jax.sampling.sample",
  "rar-export": "rar_jax.sampling.export",
  "rar-evaluate": "rar_jax.evaluation.evaluate",
  "rar-plan": "rar_jax.tools.plan",
  "rar-bench": "rar_jax.tools.bench",
  "rar-sweep": "rar_jax.tools.sweep_cli",
}


def _console_scripts() -> dict[str, str]:
  """name -> "module:function" from setup.cfg."""
  parser = configparser.ConfigParser()
  parser.read(ROOT / "setup.cfg")
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def _documented_modules() -> set[str]:
  texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  found = set()
  for path in texts:
    found |= set(re.findall(r"python -m (rar_jax(?:\.\w+)+)", path.read_text()))
  return found


@pytest.mark.slow
def test_console_scripts_point_at_the_commands():
  scripts = _console_scripts()
  assert {name: target.split(":")[0] for name, target in scripts.items()} == SCRIPTS
  for target in scripts.values():
    module, function = target.split(":")
    assert callable(getattr(importlib.import_module(module), function)), target


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
