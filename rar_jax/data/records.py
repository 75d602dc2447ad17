"""Pre-tokenized dataset format: ArrayRecord shards of token records plus `metadata.json`.

Record layout (`RECORD_FORMAT`), fixed size `2 * (seq_len + 1)` bytes, no header:

  bytes [0, 2 * seq_len)                   seq_len tokens, uint16 little-endian
  bytes [2 * seq_len, 2 * seq_len + 2)     class label, uint16 little-endian

so codebook_size and num_classes are at most 65536. Each shard is an ArrayRecord file written
with "group_size:1" (random access) and named `shard_filename(split, process, shard)`, e.g.
`train-00003-00012.array_record` for shard 12, written by host 3. A shard is written under
`<name>.inprogress` and renamed when closed, so a file with the final name is always complete.
`metadata.json` beside the shards lists every shard with its record count; `TokenRecordSource`
checks the shards against it at start-up (their record counts, and their first and last records
read and decoded: the cheap part of an integrity check) and validates each record as it is read.
A record that cannot be read (Riegeli's chunk checksums) or decoded is a `CorruptShardError`
naming the shard file and the record's index in it; `verify` reads every record of a data set
(`rar-pretokenize --verify`).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from rar_jax.infra import atomic_files, user_errors

RECORD_FORMAT = "rar_jax.tokens_u16le+label_u16le.v1"
METADATA_FILENAME = "metadata.json"
SHARD_SUFFIX = ".array_record"
TMP_SUFFIX = ".inprogress"
_MAX_ID = 2**16
_DTYPE = np.dtype("<u2")

PathLike = str | os.PathLike


def shard_filename(split: str, process_index: int, shard_index: int) -> str:
  """Shard file name; includes the writing host so hosts never collide."""
  return f"{split}-{process_index:05d}-{shard_index:05d}{SHARD_SUFFIX}"


def shard_is_complete(path: PathLike) -> bool:
  """True when the shard was closed: only closed shards carry their final name."""
  path = os.fspath(path)
  return not path.endswith(TMP_SUFFIX) and os.path.isfile(path)


@dataclasses.dataclass(frozen=True)
class RecordSpec:
  """What one record holds; encodes and decodes the fixed layout, validating values."""

  seq_len: int
  codebook_size: int
  num_classes: int

  @property
  def record_bytes(self) -> int:
    return _DTYPE.itemsize * (self.seq_len + 1)

  def check(self, tokens: np.ndarray, label: int) -> None:
    """Raises ValueError when tokens [seq_len] or the label do not fit this spec."""
    if tokens.shape != (self.seq_len,):
      raise ValueError(f"tokens have shape {tokens.shape}, expected ({self.seq_len},)")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
      bad = int(tokens[(tokens < 0) | (tokens >= self.codebook_size)][0])
      raise ValueError(f"token {bad} is outside [0, codebook_size={self.codebook_size})")
    if not 0 <= label < self.num_classes:
      raise ValueError(f"label {label} is outside [0, num_classes={self.num_classes})")

  def encode(self, tokens: np.ndarray, label: int) -> bytes:
    """tokens [seq_len] int, label int -> record bytes."""
    tokens = np.asarray(tokens)
    if not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    self.check(tokens, int(label))
    return np.append(tokens, label).astype(_DTYPE).tobytes()

  def decode(self, data: bytes) -> dict[str, np.ndarray]:
    """Record bytes -> {"tokens": int32 [seq_len], "label": int32 []}; ValueError if invalid."""
    if len(data) != self.record_bytes:
      raise ValueError(f"record has {len(data)} bytes, expected {self.record_bytes}")
    values = np.frombuffer(data, dtype=_DTYPE).astype(np.int32)  # [seq_len + 1]
    tokens, label = values[:-1], values[-1]
    self.check(tokens, int(label))
    return {"tokens": tokens, "label": label}


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  """A shard file, relative to the dataset directory, and its record count."""

  file: str
  num_records: int


class ShardWriter:
  """Writes one shard under a temporary name; `close` renames it to its final name.

  Use as a context manager: on an exception the temporary file is removed and nothing is
  renamed, so no half-written shard ever carries the final name.
  """

  def __init__(self, path: PathLike, spec: RecordSpec):
    self.path = os.fspath(path)
    self.tmp_path = self.path + TMP_SUFFIX
    self.spec = spec
    self.num_records = 0
    self._writer = array_record_module.ArrayRecordWriter(self.tmp_path, "group_size:1")

  def write(self, tokens: np.ndarray, label: int) -> None:
    """Appends one record: tokens [seq_len], label."""
    self._writer.write(self.spec.encode(tokens, label))
    self.num_records += 1

  def close(self) -> ShardInfo:
    """Finishes the file, syncs it to disk and renames it atomically."""
    self._writer.close()
    fd = os.open(self.tmp_path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(self.tmp_path, self.path)
    return ShardInfo(os.path.basename(self.path), self.num_records)

  def abort(self) -> None:
    """Drops the partial shard."""
    self._writer.close()
    os.remove(self.tmp_path)

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """The validation split: indices of records (in metadata order) never trained on, chosen by
  `seed` (rar_jax.data.holdout)."""

  seed: int
  indices: tuple[int, ...]

  def __post_init__(self):
    object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))

  def check(self, num_records: int) -> None:
    """ValueError unless the indices are strictly increasing, in [0, num_records), and leave
    at least one record to train on."""
    idx = np.asarray(self.indices, np.int64)
    if idx.size == 0:
      raise ValueError("validation.indices is empty")
    if (np.diff(idx) <= 0).any() or idx[0] < 0 or idx[-1] >= num_records:
      raise ValueError(
        f"validation.indices must be strictly increasing record indices in [0, {num_records})"
      )
    if idx.size >= num_records:
      raise ValueError(f"validation holds all {num_records} records; none is left to train on")


_METADATA_TYPES: dict[str, type] = {
  "record_format": str,
  "tokenizer": str,
  "seq_len": int,
  "codebook_size": int,
  "num_classes": int,
  "num_records": int,
  "augmentation": str,
  "source": str,
  "shards": list,
}


@dataclasses.dataclass(frozen=True)
class DatasetMetadata:
  """Contents of `metadata.json`; construction validates the values."""

  tokenizer: str
  seq_len: int
  codebook_size: int
  num_classes: int
  num_records: int
  augmentation: str
  source: str
  shards: tuple[ShardInfo, ...]
  record_format: str = RECORD_FORMAT
  validation: HeldOut | None = None  # records held out of training (rar_jax.data.holdout)

  def __post_init__(self):
    object.__setattr__(self, "shards", tuple(self.shards))
    if self.record_format != RECORD_FORMAT:
      raise ValueError(f"record_format is {self.record_format!r}, expected {RECORD_FORMAT!r}")
    for key in ("seq_len", "codebook_size", "num_classes"):
      if getattr(self, key) <= 0:
        raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
    for key in ("codebook_size", "num_classes"):
      if getattr(self, key) > _MAX_ID:
        raise ValueError(f"{key}={getattr(self, key)} does not fit in uint16 records")
    if not self.shards:
      raise ValueError("shards is empty")
    counted = sum(shard.num_records for shard in self.shards)
    if self.num_records != counted:
      raise ValueError(f"num_records={self.num_records} but the shards hold {counted}")
    if self.validation is not None:
      self.validation.check(self.num_records)

  @property
  def spec(self) -> RecordSpec:
    return RecordSpec(self.seq_len, self.codebook_size, self.num_classes)

  def to_json(self) -> str:
    fields = dataclasses.asdict(self)  # shards (and validation) become dicts
    out = {key: fields[key] for key in _METADATA_TYPES}
    if self.validation is not None:
      out["validation"] = {"seed": self.validation.seed, "indices": list(self.validation.indices)}
    return json.dumps(out, indent=2) + "\n"

  @classmethod
  def from_json(cls, text: str, *, where: str = "metadata") -> DatasetMetadata:
    """Parses `to_json` output; ValueError names the bad key and `where` (e.g. the file)."""
    try:
      raw = json.loads(text)
      if not isinstance(raw, dict):
        raise ValueError("top level is not a JSON object")
      fields = {key: _get(raw, key, typ) for key, typ in _METADATA_TYPES.items()}
      unknown = sorted(set(raw) - set(_METADATA_TYPES) - {"validation"})
      if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
      fields["shards"] = tuple(_shard_info(i, s) for i, s in enumerate(fields["shards"]))
      if "validation" in raw:
        fields["validation"] = _held_out(raw["validation"])
      return cls(**fields)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None


def _get(raw: Mapping[str, Any], key: str, typ: type) -> Any:
  if key not in raw:
    raise ValueError(f"missing key {key!r}")
  value = raw[key]
  if not isinstance(value, typ) or isinstance(value, bool):
    raise ValueError(f"key {key!r} must be {typ.__name__}, got {value!r}")
  return value


def _shard_info(index: int, raw: Any) -> ShardInfo:
  if not isinstance(raw, dict) or set(raw) != {"file", "num_records"}:
    raise ValueError(f"key 'shards'[{index}] must be {{'file': str, 'num_records': int}}")
  info = ShardInfo(_get(raw, "file", str), _get(raw, "num_records", int))
  if info.num_records < 0:
    raise ValueError(f"key 'shards'[{index}].num_records is negative")
  return info


def _held_out(raw: Any) -> HeldOut:
  if not isinstance(raw, dict) or set(raw) != {"seed", "indices"}:
    raise ValueError("key 'validation' must be {'seed': int, 'indices': [int, ...]}")
  indices = _get(raw, "indices", list)
  if not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
    raise ValueError("key 'validation'.indices must hold integers")
  return HeldOut(_get(raw, "seed", int), tuple(indices))


def write_metadata(data_dir: PathLike, meta: DatasetMetadata) -> str:
  """Writes `<data_dir>/metadata.json` atomically; returns its path."""
  path = os.path.join(data_dir, METADATA_FILENAME)
  atomic_files.write_text(path, meta.to_json())
  return path


def read_metadata(data_dir: PathLike) -> DatasetMetadata:
  """Reads `<data_dir>/metadata.json`; FileNotFoundError or ValueError naming the file."""
  path = os.path.join(data_dir, METADATA_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"dataset metadata not found: {path}")
  with open(path) as f:
    return DatasetMetadata.from_json(f.read(), where=path)


def check_compatible(
  meta: DatasetMetadata, *, seq_len: int, codebook_size: int, num_classes: int
) -> None:
  """Raises ValueError naming the first key where the dataset and the model disagree."""
  expected = {"seq_len": seq_len, "codebook_size": codebook_size, "num_classes": num_classes}
  for key, value in expected.items():
    if getattr(meta, key) != value:
      raise ValueError(
        f"dataset {key}={getattr(meta, key)} (metadata, tokenizer {meta.tokenizer!r}) does "
        f"not match the model's {key}={value}"
      )


class CorruptShardError(user_errors.UserError, ValueError):
  """A shard's record cannot be read or decoded; names the shard file and the record index."""


def corrupt_shard(path: str, record: int, error: BaseException) -> CorruptShardError:
  """The one-line error for record `record` of shard `path`."""
  cause = " ".join(str(error).split()) or type(error).__name__
  return CorruptShardError(
    f"shard {path} is corrupt at record {record} ({cause}); rewrite it: `rar-pretokenize "
    "--verify` lists every bad shard and how"
  )


class TokenRecordSource:
  """Grain random-access source over a dataset directory's shards, in metadata order.

  Items are {"tokens": int32 [seq_len], "label": int32 []}. Construction raises
  FileNotFoundError for a missing shard, ValueError for a shard whose record count differs from
  the metadata and CorruptShardError for a shard whose first or last record is bad; reading
  raises CorruptShardError naming the shard and the record's index in it.
  """

  def __init__(self, data_dir: PathLike):
    self.metadata = read_metadata(data_dir)
    self.paths = [os.path.join(data_dir, shard.file) for shard in self.metadata.shards]
    spec = self.metadata.spec
    for path, shard in zip(self.paths, self.metadata.shards, strict=True):
      _check_shard(path, shard.num_records, spec)
    counts = [shard.num_records for shard in self.metadata.shards]
    self._starts = np.cumsum([0] + counts[:-1]).tolist()  # first global index of each shard
    # "path[start:end]" read instructions skip reopening every file to count its records.
    instructions = [f"{p}[0:{n}]" for p, n in zip(self.paths, counts, strict=True)]
    self._source = grain.sources.ArrayRecordDataSource(instructions)
    self._spec = self.metadata.spec

  def __len__(self) -> int:
    return self.metadata.num_records

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    try:
      return self._spec.decode(self._source[index])
    except Exception as e:  # noqa: BLE001 - Riegeli raises RuntimeError; decode ValueError
      shard = bisect.bisect_right(self._starts, index) - 1
      raise corrupt_shard(self.paths[shard], index - self._starts[shard], e) from None

  def __repr__(self) -> str:
    return f"TokenRecordSource({len(self.paths)} shards, {len(self)} records)"


def _open_shard(path: str, expected: int) -> Any:
  """An ArrayRecordReader of a complete shard holding `expected` records.

  Raises:
    FileNotFoundError: the shard is missing (or only its .inprogress file is there).
    ValueError: it is not a readable ArrayRecord file, or holds another number of records.
  """
  if not shard_is_complete(path):
    partial = " (only a partial .inprogress file)" if os.path.exists(path + TMP_SUFFIX) else ""
    raise FileNotFoundError(f"shard listed in metadata is missing: {path}{partial}")
  reader = array_record_module.ArrayRecordReader(path)
  if not reader.ok():  # e.g. cut mid-file; close() would raise an empty RuntimeError
    raise ValueError(f"shard {path} is not a readable ArrayRecord file (truncated?)")
  found = reader.num_records()
  if found != expected:
    reader.close()
    raise ValueError(
      f"shard {path} holds {found} records but the metadata says {expected} "
      "(truncated or rewritten)"
    )
  return reader


def _read(reader: Any, path: str, indices: list[int], spec: RecordSpec) -> None:
  """Reads and decodes records `indices` of a shard; CorruptShardError names the first bad one.
  A batch that fails is read again record by record to find it."""
  try:
    for data in reader.read(indices):
      spec.decode(data)
    return
  except Exception:  # noqa: BLE001 - found below, one record at a time
    pass
  for index in indices:
    try:
      spec.decode(reader.read([index])[0])
    except Exception as e:  # noqa: BLE001 - Riegeli raises RuntimeError; decode ValueError
      raise corrupt_shard(path, index, e) from None


def _check_shard(path: str, expected: int, spec: RecordSpec) -> None:
  """The start-up check of a shard: present, readable, `expected` records, and its first and
  last records read (their chunk checksums) and decoded."""
  reader = _open_shard(path, expected)
  try:
    _read(reader, path, sorted({0, expected - 1}) if expected else [], spec)
  finally:
    reader.close()


@dataclasses.dataclass(frozen=True)
class ShardProblem:
  """What `verify` found wrong with one shard (the message names the file and the record)."""

  file: str
  message: str


def verify(data_dir: PathLike, batch: int = 4096) -> tuple[DatasetMetadata, list[ShardProblem]]:
  """Reads and decodes every record of every shard of a data set (in batches of `batch`).

  Returns:
    The metadata and one ShardProblem per bad shard (missing, unreadable, another record count,
    or the first record that cannot be read or decoded); empty when every record is good.

  Raises:
    FileNotFoundError, ValueError: the metadata itself is missing or invalid.
  """
  meta = read_metadata(data_dir)
  problems = []
  for shard in meta.shards:
    path = os.path.join(data_dir, shard.file)
    try:
      reader = _open_shard(path, shard.num_records)
      try:
        for start in range(0, shard.num_records, batch):
          _read(reader, path, list(range(start, min(start + batch, shard.num_records))), meta.spec)
      finally:
        reader.close()
    except (OSError, ValueError) as e:
      problems.append(ShardProblem(shard.file, " ".join(str(e).split())))
  return meta, problems
