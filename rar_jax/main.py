"""Entry point of the training job (also the console script `rar-train`).

  python -m rar_jax.main --config=configs/digits.py --workdir=workdirs/digits
  python -m rar_jax.main --config=configs/imagenet.py:XL --workdir=gs://bucket/rar_xl \
      --config.train.global_batch=1024

Any config key can be overridden with --config.<key>=<value>.
"""

from absl import app, flags
from ml_collections import config_flags

from rar_jax.commands import startup

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file and argument, e.g. configs/imagenet.py:L.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and logs (local path or gs://).")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  "allow_config_change",
  False,
  "Resume a workdir with changed non-model config keys (e.g. optim.lr, train.steps); a "
  "changed model key is refused either way.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from rar_jax.training import train  # noqa: PLC0415

  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _ALLOW_CONFIG_CHANGE.value)


def cli() -> None:
  """Console-script entry point (`rar-train`)."""
  startup.run(main, __name__)


if __name__ == "__main__":
  cli()
