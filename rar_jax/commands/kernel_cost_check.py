"""The check of the Pallas kernel accounting against the TPU compiler on XLA twins
(`rar_jax.tools.kernel_cost_check`), one JSON line per kernel.

  JAX_PLATFORMS=cpu python -m rar_jax.commands.kernel_cost_check [--topology=v5p:2x2x1]
"""

from __future__ import annotations

import json

from absl import flags

from rar_jax.commands import startup
from rar_jax.tools import kernel_cost_check

flags.DEFINE_string("topology", "v5p:2x2x1", "TPU slice (libtpu's names); one chip is used.")


def main(argv: list[str]) -> None:
  if len(argv) != 1:
    raise ValueError(f"kernel_cost_check takes no arguments, got {argv[1:]}")
  for row in kernel_cost_check.check(flags.FLAGS.topology):
    print(json.dumps(row), flush=True)


def cli() -> None:
  """Entry point: runs `main` under the shared start-up."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
