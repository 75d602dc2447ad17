"""Starting the absl commands, as `python -m rar_jax...` or as console scripts (setup.cfg).

absl's --help lists the key flags of the module named by sys.argv[0]. Run with `python -m`,
a command's flags are registered under that name; started as a console script (`rar-sample`),
they are registered under the module's import name instead, so `run` also declares them key
flags of sys.argv[0].
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags


def run(main: Callable[[list[str]], None], module: str) -> None:
  """app.run(main) for the command defined in `module` (pass `__name__`)."""
  for flag in flags.FLAGS.get_key_flags_for_module(module):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)
