"""The validation split of a token data set: records held out of training, chosen by a seed
and recorded in its `metadata.json` (key `validation`), so every job that reads the data set
agrees on them.

  rar-holdout --data_dir=/data/in1k_tokens --count=10000 [--seed=0]

Training reads only the other records (`TrainingRecords`); the held-out evaluation reads these
(`validation_arrays`). An existing split is never replaced: asking for a different one is an
error.
"""

from __future__ import annotations

import runpy

import numpy as np

from rar_jax.data import records
from rar_jax.data.records import PathLike, TokenRecordSource


def choose(num_records: int, count: int, seed: int) -> records.HeldOut:
  """`count` distinct record indices of [0, num_records), drawn by `seed`, sorted."""
  if not 0 < count < num_records:
    raise ValueError(f"held-out count must be in [1, {num_records}), got {count}")
  picked = np.random.default_rng(seed).choice(num_records, count, replace=False)
  return records.HeldOut(seed, tuple(np.sort(picked).tolist()))


def add_split(data_dir: PathLike, count: int, seed: int = 0) -> records.DatasetMetadata:
  """Writes a validation split of `count` records into data_dir's metadata.json (atomically).

  The same split again is a no-op; a different one raises ValueError naming the file.
  """
  meta = records.read_metadata(data_dir)
  split = choose(meta.num_records, count, seed)
  if meta.validation is not None:
    if meta.validation == split:
      return meta
    raise ValueError(
      f"{data_dir}/{records.METADATA_FILENAME} already has a validation split "
      f"({len(meta.validation.indices)} records, seed {meta.validation.seed}); not replacing it"
    )
  meta = records.DatasetMetadata(**{**vars(meta), "validation": split})
  records.write_metadata(data_dir, meta)
  return meta


def require_split(data_dir: PathLike) -> records.HeldOut:
  """The data set's validation split; ValueError naming the metadata file when it has none."""
  meta = records.read_metadata(data_dir)
  if meta.validation is None:
    raise ValueError(
      f"{data_dir}/{records.METADATA_FILENAME} has no validation split, needed by "
      "eval.every_steps / eval.fid_samples: add one with "
      f"python -m rar_jax.data.holdout --data_dir={data_dir} --count=N"
    )
  return meta.validation


class TrainingRecords:
  """Random-access source over the records that are not held out, in their order.

  The i-th kept record is record i + k, where k counts the held-out indices h_j with
  h_j - j <= i (h_j - j records are kept before h_j): a binary search, no index table.
  """

  def __init__(self, source: TokenRecordSource, held_out: records.HeldOut):
    self.source = source
    held = np.asarray(held_out.indices, np.int64)
    self._kept_before = held - np.arange(len(held))  # [H] kept records before each h_j
    self._len = len(source) - len(held)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self._len:
      raise IndexError(f"record {index} is outside [0, {self._len})")
    return self.source[index + int(np.searchsorted(self._kept_before, index, side="right"))]

  def __repr__(self) -> str:
    return f"TrainingRecords({self.source!r}, {self._len} of {len(self.source)})"


def training_source(data_dir: PathLike) -> TokenRecordSource | TrainingRecords:
  """The records training may read: all of them, or those outside the validation split."""
  source = TokenRecordSource(data_dir)
  split = source.metadata.validation
  return source if split is None else TrainingRecords(source, split)


def validation_arrays(data_dir: PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [N, L], labels int32 [N]) of the validation split, read into memory."""
  split = require_split(data_dir)
  source = TokenRecordSource(data_dir)
  rows = [source[i] for i in split.indices]
  tokens = np.stack([r["tokens"] for r in rows]).astype(np.int32)
  labels = np.asarray([r["label"] for r in rows], np.int32).reshape(-1)
  return tokens, labels


if (
  __name__ == "__main__"
):  # `python -m rar_jax.data.holdout` is the command rar_jax.commands.holdout
  runpy.run_module("rar_jax.commands.holdout", run_name="__main__", alter_sys=True)
