"""Tests for the pre-tokenized record format, shards and metadata."""

import json
import os
import re

import numpy as np
import pytest
from array_record.python import array_record_module

from rar_jax.data import records
from tests.helpers import train_worker

SPEC = records.RecordSpec(seq_len=16, codebook_size=1024, num_classes=10)


def _rows(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
  """Records start..start+n: tokens [n, 16] (tokens[:, 0] is the record id), labels [n]."""
  ids = np.arange(start, start + n)
  tokens = (ids[:, None] + 7 * np.arange(SPEC.seq_len)[None, :]) % SPEC.codebook_size
  return tokens, ids % SPEC.num_classes


def _metadata(shards: list[records.ShardInfo]) -> records.DatasetMetadata:
  return records.DatasetMetadata(
    tokenizer="maskgit-vqgan",
    seq_len=SPEC.seq_len,
    codebook_size=SPEC.codebook_size,
    num_classes=SPEC.num_classes,
    num_records=sum(s.num_records for s in shards),
    augmentation="center_crop",
    source="synthetic",
    shards=tuple(shards),
  )


def _write_dataset(data_dir, counts=(5, 7)) -> records.DatasetMetadata:
  shards, start = [], 0
  for i, n in enumerate(counts):
    path = os.path.join(data_dir, records.shard_filename("train", i, 0))
    shards.append(train_worker.write_shard(path, SPEC, *_rows(start, n)))
    start += n
  meta = _metadata(shards)
  records.write_metadata(data_dir, meta)
  return meta


def _write_raw(path, payloads: list[bytes]) -> None:
  writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
  for payload in payloads:
    writer.write(payload)
  writer.close()


def test_shard_filename_has_process_and_shard():
  assert records.shard_filename("train", 3, 12) == "train-00003-00012.array_record"


def test_encode_decode_round_trip():
  tokens, labels = _rows(0, 1)
  data = SPEC.encode(tokens[0], labels[0])
  assert len(data) == SPEC.record_bytes == 34
  assert data[:2] == np.uint16(tokens[0, 0]).astype("<u2").tobytes()  # little-endian first
  item = SPEC.decode(data)
  assert item["tokens"].dtype == np.int32 and item["label"].dtype == np.int32
  np.testing.assert_array_equal(item["tokens"], tokens[0])
  assert item["label"] == labels[0]


@pytest.mark.parametrize(
  "tokens, label, match",
  [
    (np.zeros(15, np.int32), 0, "shape"),
    (np.full(16, 1024), 0, "token 1024"),
    (np.full(16, -1), 0, "token -1"),
    (np.zeros(16, np.int32), 10, "label 10"),
    (np.zeros(16, np.float32), 0, "integers"),
  ],
)
def test_encode_rejects_bad_values(tokens, label, match):
  with pytest.raises(ValueError, match=match):
    SPEC.encode(tokens, label)


def test_source_round_trip(tmp_path):
  meta = _write_dataset(tmp_path)
  assert records.read_metadata(tmp_path) == meta
  source = records.TokenRecordSource(tmp_path)
  assert len(source) == 12
  tokens, labels = _rows(0, 12)
  for i in range(12):
    item = source[i]
    np.testing.assert_array_equal(item["tokens"], tokens[i])
    assert item["label"] == labels[i]


def test_metadata_json_round_trip():
  meta = _metadata([records.ShardInfo("a.array_record", 3), records.ShardInfo("b", 4)])
  raw = json.loads(meta.to_json())
  assert raw["shards"] == [
    {"file": "a.array_record", "num_records": 3},
    {"file": "b", "num_records": 4},
  ]
  assert raw["record_format"] == records.RECORD_FORMAT
  assert records.DatasetMetadata.from_json(meta.to_json()) == meta


def _bad_record_dataset(tmp_path, payload: bytes, bad: int = 1):
  """A dataset whose second shard's record 2 is `payload`; returns that shard's path."""
  good = train_worker.write_shard(tmp_path / "a.array_record", SPEC, *_rows(0, 4))
  tokens, labels = _rows(4, 3)
  payloads = [SPEC.encode(t, int(label)) for t, label in zip(tokens, labels, strict=True)]
  payloads[bad] = payload
  _write_raw(tmp_path / "b.array_record", payloads)
  records.write_metadata(tmp_path, _metadata([good, records.ShardInfo("b.array_record", 3)]))
  return str(tmp_path / "b.array_record")


@pytest.mark.parametrize(
  "payload, match",
  [
    (b"\x00" * 32, "32 bytes, expected 34"),
    (np.array([0] * 5 + [1024] + [0] * 11, "<u2").tobytes(), "token 1024"),
    (np.array([0] * 16 + [10], "<u2").tobytes(), "label 10"),
  ],
)
def test_source_validates_records(tmp_path, payload, match):
  bad_path = _bad_record_dataset(tmp_path, payload)
  source = records.TokenRecordSource(tmp_path)  # the first and last records are fine
  source[6]  # record 2 of the bad shard is fine
  with pytest.raises(records.CorruptShardError, match=match) as info:
    source[5]
  assert f"shard {bad_path} is corrupt at record 1 (" in str(info.value)


@pytest.mark.parametrize("bad", [0, 2])
def test_a_bad_first_or_last_record_fails_at_start(tmp_path, bad):
  bad_path = _bad_record_dataset(tmp_path, b"\x00" * 32, bad)
  with pytest.raises(records.CorruptShardError, match=rf"shard {bad_path} is corrupt at record "
                     rf"{bad} \(record has 32 bytes, expected 34\)"):  # fmt: skip
    records.TokenRecordSource(tmp_path)


def _scramble(path, offset: int, size: int) -> None:
  """Overwrites size bytes of the file at offset with random bytes (a damaged disk block)."""
  data = bytearray(path.read_bytes())
  data[offset : offset + size] = np.random.default_rng(0).bytes(size)
  path.write_bytes(bytes(data))


def _riegeli_dataset(tmp_path, records_per_shard: int = 48):
  """Two shards of records_per_shard records; returns the second shard's path."""
  _write_dataset(tmp_path, (records_per_shard, records_per_shard))
  return tmp_path / records.shard_filename("train", 1, 0)


def test_random_bytes_in_a_shard_are_named_with_the_shard_and_record(tmp_path):
  path = _riegeli_dataset(tmp_path)
  _scramble(path, 200, 16)  # inside a chunk after the first record's
  source = records.TokenRecordSource(tmp_path)  # first and last records are intact
  for i in range(48):
    source[i]  # the other shard reads
  with pytest.raises(records.CorruptShardError) as info:
    for i in range(48, 96):
      source[i]
  assert re.fullmatch(
    rf"shard {re.escape(str(path))} is corrupt at record {i - 48} \(Corrupted Riegeli.*\); "
    r"rewrite it: `rar-pretokenize --verify` lists every bad shard and how",
    str(info.value),
  )
  _scramble(path, 0, 4096)  # the 4 KB of random bytes, over the first records
  with pytest.raises(records.CorruptShardError, match=rf"shard {re.escape(str(path))} is corrupt"):
    records.TokenRecordSource(tmp_path)


def test_verify_lists_every_bad_shard(tmp_path):
  path = _riegeli_dataset(tmp_path)
  meta, problems = records.verify(tmp_path, batch=16)
  assert problems == [] and meta.num_records == 96
  _scramble(path, 200, 16)
  _, problems = records.verify(tmp_path, batch=16)
  assert [p.file for p in problems] == [path.name]
  assert re.match(rf"shard {re.escape(str(path))} is corrupt at record \d+ ", problems[0].message)
  first = tmp_path / records.shard_filename("train", 0, 0)
  first.write_bytes(first.read_bytes()[:1000])  # cut short
  _, problems = records.verify(tmp_path)
  assert [p.file for p in problems] == [first.name, path.name]


def test_missing_shard_fails_at_start(tmp_path):
  _write_dataset(tmp_path)
  missing = tmp_path / records.shard_filename("train", 1, 0)
  os.remove(missing)
  with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
    records.TokenRecordSource(tmp_path)


def test_truncated_shard_fails_at_start(tmp_path):
  _write_dataset(tmp_path)
  path = tmp_path / records.shard_filename("train", 1, 0)
  train_worker.write_shard(path, SPEC, *_rows(0, 6))  # metadata says 7
  with pytest.raises(ValueError, match=re.escape(f"{path} holds 6 records") + ".* says 7"):
    records.TokenRecordSource(tmp_path)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])  # cut mid-file
  with pytest.raises(ValueError, match=re.escape(str(path))):
    records.TokenRecordSource(tmp_path)


def test_half_written_shard_is_not_complete(tmp_path):
  path = tmp_path / records.shard_filename("train", 0, 0)
  writer = records.ShardWriter(path, SPEC)
  writer.write(*(x[0] for x in _rows(0, 1)))
  assert os.path.exists(writer.tmp_path)
  assert not records.shard_is_complete(path)
  assert not records.shard_is_complete(writer.tmp_path)
  assert writer.close() == records.ShardInfo(path.name, 1)
  assert records.shard_is_complete(path) and not os.path.exists(writer.tmp_path)


def test_partial_shard_counts_as_missing(tmp_path):
  _write_dataset(tmp_path)
  path = tmp_path / records.shard_filename("train", 1, 0)
  os.rename(path, f"{path}{records.TMP_SUFFIX}")
  with pytest.raises(FileNotFoundError, match="partial"):
    records.TokenRecordSource(tmp_path)


def test_writer_drops_partial_shard_on_error(tmp_path):
  path = tmp_path / "x.array_record"
  with pytest.raises(ValueError, match="label 99"):
    with records.ShardWriter(path, SPEC) as writer:
      writer.write(np.zeros(16, np.int32), 0)
      writer.write(np.zeros(16, np.int32), 99)
  assert os.listdir(tmp_path) == []


def test_read_metadata_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "metadata.json"))):
    records.read_metadata(tmp_path)


@pytest.mark.parametrize(
  "edit, match",
  [
    (lambda raw: raw.pop("seq_len"), "missing key 'seq_len'"),
    (lambda raw: raw.update(codebook_size="1024"), "key 'codebook_size' must be int"),
    (lambda raw: raw.update(num_records=99), "num_records=99"),
    (lambda raw: raw.update(extra=1), "unknown key 'extra'"),
    (lambda raw: raw["shards"][0].pop("file"), r"'shards'\[0\]"),
    (lambda raw: raw.update(record_format="v0"), "record_format"),
  ],
)
def test_read_metadata_bad_keys(tmp_path, edit, match):
  _write_dataset(tmp_path)
  path = tmp_path / "metadata.json"
  raw = json.loads(path.read_text())
  edit(raw)
  path.write_text(json.dumps(raw))
  with pytest.raises(ValueError, match=match) as info:
    records.read_metadata(tmp_path)
  assert str(path) in str(info.value)


def test_read_metadata_bad_json(tmp_path):
  (tmp_path / "metadata.json").write_text("{not json")
  with pytest.raises(ValueError, match=re.escape(str(tmp_path / "metadata.json"))):
    records.read_metadata(tmp_path)


def test_check_compatible():
  meta = _metadata([records.ShardInfo("a", 1)])
  records.check_compatible(meta, seq_len=16, codebook_size=1024, num_classes=10)
  with pytest.raises(ValueError, match="codebook_size=1024 .* codebook_size=4096"):
    records.check_compatible(meta, seq_len=16, codebook_size=4096, num_classes=10)
  with pytest.raises(ValueError, match="num_classes=10 .* num_classes=1000"):
    records.check_compatible(meta, seq_len=16, codebook_size=1024, num_classes=1000)
