"""Sweeps of a config's get_hyper: a launcher for `rar_jax.commands.sweep` (also `rar-sweep`) that
works from a checkout without installing the package.

  python launch/sweep.py run --config=configs/digits_sweep.py --workdir=workdirs/sweep --mode=local
  python launch/sweep.py collect --workdir=workdirs/sweep   # results.md, results.csv, loss.png
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from rar_jax.commands import sweep  # noqa: E402

if __name__ == "__main__":
  sweep.cli()
