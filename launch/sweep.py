"""Sweeps: expand a config's get_hyper(h) into runs of rar_jax.main, and collect their results.

  python launch/sweep.py run --config=configs/digits_sweep.py --workdir=workdirs/sweep --mode=print
  python launch/sweep.py run --config=configs/digits_sweep.py --workdir=workdirs/sweep --mode=local
  python launch/sweep.py run --config=configs/imagenet.py:L --workdir=gs://b/abl --mode=tpu \
      [--execute] [-- --config.data.dir=gs://b/tokens]
  python launch/sweep.py collect --workdir=workdirs/sweep   # results.md, results.csv, loss.png

Modes: print (the rar_jax.main commands), local (run them one after another here), tpu / gpu
(the launch/tpu.sh / launch/gpu.sh train commands; --execute runs them). The logic lives in
rar_jax/tools/sweeps.py.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from rar_jax.tools import sweeps  # noqa: E402

if __name__ == "__main__":
  sys.exit(sweeps.main(sys.argv[1:]))
