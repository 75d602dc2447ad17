"""`rar-pretokenize`: an image data set into token record shards + `metadata.json`
(`rar_jax.data.pretokenize`, whose docstring describes the sources, resuming and hosts).

  rar-pretokenize --config=configs/pretokenize.py:<source> --output_dir=DIR \
      [--config.<key>=<value> ...] [--process_index=I --process_count=N | --distributed]
  rar-pretokenize --verify --output_dir=DIR   # reads every record, lists the bad shards
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from rar_jax.commands import startup
from rar_jax.data import pretokenize
from rar_jax.infra import console, distributed

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/pretokenize.py:<source>")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write shards + metadata.json.")
_INDEX = flags.DEFINE_integer("process_index", None, "Default: jax.process_index().")
_COUNT = flags.DEFINE_integer("process_count", None, "Default: jax.process_count().")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-process run (as RAR_DISTRIBUTED=1; see rar_jax.infra.distributed).",
)
_VERIFY = flags.DEFINE_bool(
  "verify", False, "Read every record of the data set in --output_dir and list the bad shards."
)
flags.mark_flags_as_required(["output_dir"])


def main(argv: list[str]) -> None:
  del argv
  if _VERIFY.value:
    pretokenize.verify(_OUTPUT_DIR.value)
    return
  if _CONFIG.value is None:
    raise flags.IllegalFlagValueError("give --config=configs/pretokenize.py:<source>")
  if _DISTRIBUTED.value:
    os.environ["RAR_DISTRIBUTED"] = "1"
  distributed.initialize()  # after --distributed is known: not the shared start-up's
  meta = pretokenize.run(
    _CONFIG.value, _OUTPUT_DIR.value, process_index=_INDEX.value, process_count=_COUNT.value
  )
  console.info("%s: %d records, %d shards", _OUTPUT_DIR.value, meta.num_records, len(meta.shards))


def cli() -> None:
  """Console-script entry point (`rar-pretokenize`)."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
