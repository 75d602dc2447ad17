"""The XPK workloads of a config's get_hyper sweep, one line per point: the workload name, then
the rar_jax.main arguments, shell-quoted (`rar_jax.tools.xpk_sweep`; launch/xpk.sh reads them).

  python -m rar_jax.commands.xpk_sweep --config=configs/imagenet.py:B --workdir=gs://b/abl \
      --prefix=rar [-- more rar_jax.main args for every run]
"""

from __future__ import annotations

import shlex

from absl import flags

from rar_jax.commands import startup
from rar_jax.tools import xpk_sweep

_CONFIG = flags.DEFINE_string("config", None, "Config file[:arg] with get_hyper.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Base workdir (gs://...).")
_PREFIX = flags.DEFINE_string("prefix", None, "Workload names start with this.")
flags.mark_flags_as_required(["config", "workdir", "prefix"])


def main(argv: list[str]) -> None:
  """Prints the workloads; arguments after `--` go to every run's rar_jax.main."""
  for name, main_args in xpk_sweep.workloads(
    _CONFIG.value, _WORKDIR.value, _PREFIX.value, argv[1:]
  ):
    print(shlex.join([name, *main_args]))


def cli() -> None:
  """Entry point (`python -m rar_jax.commands.xpk_sweep`)."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
