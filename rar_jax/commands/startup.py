"""The start-up every command shares: flags parsed by absl, then console logging, the host
allocator and (for commands that run on every host) the multi-process start, then the command's
main; a user error anywhere prints one line (`infra.user_errors`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from rar_jax.infra import console, distributed, host_memory, user_errors


def run(main: Callable[[list[str]], object], module: str, *, multi_process: bool = True) -> None:
  """Runs `main(argv)` as the command defined in `module` (pass `__name__`).

  Before main: third-party INFO logging off unless --verbosity, freed host memory kept for reuse
  (before JAX starts its threads), and with multi_process the join of a multi-process run
  (before anything queries devices).
  """

  def started(argv: Sequence[str]) -> object:
    console.setup()
    host_memory.retain_freed_memory()
    if multi_process:
      distributed.initialize()
    return main(list(argv))

  entry = sys.modules["__main__"]  # a console script's: its --help shows the command's usage
  if not getattr(entry, "__doc__", None):
    entry.__doc__ = sys.modules[module].__doc__
  user_errors.run(started, module)
