"""`rar-holdout`: holds out records of a token data set as its validation split
(`rar_jax.data.holdout`).

  rar-holdout --data_dir=/data/in1k_tokens --count=10000 [--seed=0]
"""

from __future__ import annotations

from absl import app, flags

from rar_jax.commands import startup
from rar_jax.data import holdout
from rar_jax.infra import console

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Pretokenized data set (metadata.json).")
_COUNT = flags.DEFINE_integer("count", None, "Records to hold out.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed that picks them.")
flags.mark_flags_as_required(["data_dir", "count"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  meta = holdout.add_split(_DATA_DIR.value, _COUNT.value, _SEED.value)
  console.info(
    "%s: %d of %d records held out (seed %d)",
    _DATA_DIR.value,
    len(meta.validation.indices),
    meta.num_records,
    meta.validation.seed,
  )


def cli() -> None:
  """Console-script entry point (`rar-holdout`)."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
