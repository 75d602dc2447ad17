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

import argparse
import sys
from collections.abc import Sequence

from rar_jax.infra import user_errors
from rar_jax.tools import sweep_results, sweeps


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="rar-sweep",
    description="Run a config's get_hyper sweep, or collect its results.",
  )
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="print or run every point of the sweep")
  run.add_argument("--config", required=True, help="config file[:arg], e.g. configs/imagenet.py:B")
  run.add_argument("--workdir", required=True, help="base workdir; each run gets <base>/<name>")
  run.add_argument("--mode", choices=sweeps.MODES, default="print", help="default: print")
  run.add_argument("--execute", action="store_true", help="tpu/gpu: run the launch commands")
  run.add_argument("--only", help="only the runs whose name contains this")
  run.add_argument("--keep_going", action="store_true", help="continue after a failed run")
  run.add_argument("--python", help="interpreter for local runs (default: this one)")
  run.add_argument("extra", nargs="*", help="after --: more rar_jax.main args for every run")
  col = sub.add_parser("collect", help="write results.md, results.csv and loss.png")
  col.add_argument("--workdir", required=True, help="the sweep's base workdir")
  return parser


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


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line argv (default: sys.argv[1:]); returns the exit status."""
  args = _parser().parse_args(argv)
  if args.command == "collect":
    return _collect(args.workdir)
  failed = sweeps.run_sweep(
    args.config,
    args.workdir,
    args.mode,
    execute=args.execute,
    extra=args.extra,
    only=args.only,
    keep_going=args.keep_going,
    python=args.python,
  )
  return 1 if failed else 0


def cli() -> None:
  """Console-script entry point (`rar-sweep`); user errors print one line."""
  sys.exit(user_errors.call(main))


if __name__ == "__main__":
  cli()
