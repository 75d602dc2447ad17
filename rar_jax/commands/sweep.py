"""Command line of the sweeps: run a config's get_hyper sweep, or collect its results.

  rar-sweep run --config=configs/digits_sweep.py --workdir=workdirs/sweep --mode=print
  rar-sweep run --config=configs/digits_sweep.py --workdir=workdirs/sweep --mode=local
  rar-sweep run --config=configs/imagenet.py:L --workdir=gs://b/abl --mode=tpu \
      [--execute] [-- --config.data.dir=gs://b/tokens]
  rar-sweep collect --workdir=workdirs/sweep   # results.md, results.csv, loss.png

(`python -m rar_jax.commands.sweep` and `python launch/sweep.py` are the same command.) Modes:
print (the rar_jax.main commands), local (run them one after another here), tpu / gpu (the
launch/tpu.sh / launch/gpu.sh train commands; --execute runs them). The sweep logic is
`rar_jax.tools.sweeps`, the results `rar_jax.tools.sweep_results`.
"""

from __future__ import annotations

import sys

from absl import app, flags

from rar_jax.commands import startup
from rar_jax.tools import sweep_results, sweeps

_CONFIG = flags.DEFINE_string("config", None, "run: config file[:arg], e.g. configs/imagenet.py:B")
_WORKDIR = flags.DEFINE_string("workdir", None, "Base workdir; each run gets <base>/<name>.")
_MODE = flags.DEFINE_enum("mode", "print", list(sweeps.MODES), "run: what to do with each point.")
_EXECUTE = flags.DEFINE_bool("execute", False, "run, tpu/gpu: run the launch commands.")
_ONLY = flags.DEFINE_string("only", None, "run: only the runs whose name contains this.")
_KEEP_GOING = flags.DEFINE_bool("keep_going", False, "run: continue after a failed run.")
_PYTHON = flags.DEFINE_string("python", None, "run: interpreter for local runs (default: this).")
flags.mark_flags_as_required(["workdir"])
USAGE = "usage: rar-sweep run|collect --workdir=W [--config=C --mode=M ...] [-- main args]"


def _collect(workdir: str) -> int:
  results = sweep_results.collect(workdir)
  if not results:
    print(f"no runs found under {workdir}", file=sys.stderr)
    return 1
  paths = sweep_results.write_results(workdir, results)
  header, rows = sweep_results.results_table(results)
  print(sweep_results.markdown(workdir, header, rows))
  print("wrote " + ", ".join(paths.values()))
  return 0


def main(argv: list[str]) -> int:
  """`run` (print or run every point of the sweep; arguments after `--` go to every run's
  rar_jax.main) or `collect` (results.md, results.csv and loss.png); the exit status."""
  if len(argv) < 2 or argv[1] not in ("run", "collect"):
    raise app.UsageError(USAGE)
  command, extra = argv[1], argv[2:]
  if command == "collect":
    if extra:
      raise app.UsageError(f"unexpected arguments: {extra}")
    return _collect(_WORKDIR.value)
  if _CONFIG.value is None:
    raise app.UsageError("rar-sweep run needs --config")
  failed = sweeps.run_sweep(
    _CONFIG.value,
    _WORKDIR.value,
    _MODE.value,
    execute=_EXECUTE.value,
    extra=extra,
    only=_ONLY.value,
    keep_going=_KEEP_GOING.value,
    python=_PYTHON.value,
  )
  return 1 if failed else 0


def cli() -> None:
  """Console-script entry point (`rar-sweep`)."""
  startup.run(lambda argv: sys.exit(main(argv)), __name__, multi_process=False)


if __name__ == "__main__":
  cli()
