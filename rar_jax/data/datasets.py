"""Which pre-tokenized dataset a config trains on: creating the embedded one when absent and
checking that its metadata fits the model before anything compiles."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax

from rar_jax.data import gcs_mount, records
from rar_jax.infra import console, paths
from rar_jax.model.presets import ModelConfig

BUILTINS = ("digits",)


def prepare(data_cfg: Mapping[str, Any], model_cfg: ModelConfig) -> str:
  """Returns the data directory of config.data (absolute), validated against the model.

  Keys: `dir` (ArrayRecord shards + metadata.json) and `builtin` ("digits" creates the embedded
  scikit-learn digits set in `dir` when it is absent; empty for user data).

  Raises:
    FileNotFoundError: no metadata.json in dir, or a gs:// dir whose bucket is not mounted.
    ValueError: unknown builtin, or metadata that does not fit the model (naming the key).
  """
  if not data_cfg["dir"]:
    raise ValueError(
      "data.dir is not set: point it at a pretokenized data set (rar_jax.data.pretokenize)"
    )
  data_dir = paths.absolute(gcs_mount.local_path(os.fspath(data_cfg["dir"])))  # gs://: gcsfuse
  builtin = data_cfg.get("builtin") or ""
  if builtin:
    if builtin not in BUILTINS:
      raise ValueError(f"data.builtin={builtin!r} is not one of {BUILTINS}")
    if jax.process_count() > 1:
      raise ValueError(f"data.builtin={builtin!r} is for single-process runs; pretokenize first")
    from rar_jax.data import pretokenize  # noqa: PLC0415 - pulls in sklearn only when needed

    if not os.path.exists(os.path.join(data_dir, records.METADATA_FILENAME)):
      console.info("Creating the embedded %s data set in %s", builtin, data_dir)
    pretokenize.ensure_digits(data_dir)
  meta = records.read_metadata(data_dir)
  records.check_compatible(
    meta,
    seq_len=model_cfg.seq_len,
    codebook_size=model_cfg.codebook_size,
    num_classes=model_cfg.num_classes,
  )
  return data_dir
