"""`rar-export`: a parameters-only export for sampling, from a training workdir or from official
weights (`rar_jax.sampling.export`).

  rar-export --workdir=W [--step=S] --output=O [--dtype=bfloat16]
  rar-export --workdir=W --output=rar.bin --format=torch  # the official state dict
  rar-export --official=rar_xl.bin --config=configs/imagenet.py:XL --output=O

An existing --output is refused unless --overwrite.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from rar_jax import sharding
from rar_jax.commands import startup
from rar_jax.infra import checkpointing
from rar_jax.model import convert, presets
from rar_jax.sampling import export

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to export from.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_OFFICIAL = flags.DEFINE_string("official", None, "Official rar_*.bin (or .npz) to import.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "With --official: its config.")
_OUTPUT = flags.DEFINE_string("output", None, "Export directory, or a .bin/.npz with torch.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", sorted(export.DTYPES), "Stored parameter dtype.")
_FORMAT = flags.DEFINE_enum("format", "orbax", ["orbax", "torch"], "orbax export or official.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
flags.mark_flags_as_required(["output"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (_WORKDIR.value is None) == (_OFFICIAL.value is None):
    raise app.UsageError("give exactly one of --workdir and --official")
  if _WORKDIR.value:
    config = checkpointing.read_workdir_config(_WORKDIR.value)
    cfg = presets.resolve(config.model)
    mesh = sharding.make_mesh(devices=jax.local_devices()[:1])
    params = export.params_from_workdir(_WORKDIR.value, _STEP.value, cfg, mesh)
  else:
    if _CONFIG.value is None:
      raise app.UsageError("--official needs --config (the model sizes)")
    config = _CONFIG.value
    cfg = presets.resolve(config.model)
    params = convert.load_official(_OFFICIAL.value, cfg)
  if _FORMAT.value == "torch":
    if os.path.exists(_OUTPUT.value) and not _OVERWRITE.value:
      raise FileExistsError(f"{_OUTPUT.value} already exists; pass --overwrite to replace it")
    convert.save_official(params, cfg, _OUTPUT.value, overwrite=_OVERWRITE.value)
  else:
    export.write(_OUTPUT.value, params, cfg, config, _DTYPE.value, _OVERWRITE.value)
  print(f"wrote {_OUTPUT.value}")


def cli() -> None:
  """Console-script entry point (`rar-export`)."""
  startup.run(main, __name__, multi_process=False)


if __name__ == "__main__":
  cli()
