"""Tests for the grain input pipeline and global batch assembly."""

import itertools
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rar_jax.data import pipeline, records
from tests.helpers import train_worker

SPEC = records.RecordSpec(seq_len=16, codebook_size=1024, num_classes=10)
NUM_RECORDS = 96


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """96 records in 3 shards from 2 writer processes; tokens[:, 0] is the record id."""
  data_dir = tmp_path_factory.mktemp("tokens")
  shards, start = [], 0
  for (process, shard), n in zip([(0, 0), (0, 1), (1, 0)], [40, 24, 32], strict=True):
    ids = np.arange(start, start + n)
    tokens = (ids[:, None] + 7 * np.arange(SPEC.seq_len)[None, :]) % SPEC.codebook_size
    path = os.path.join(data_dir, records.shard_filename("train", process, shard))
    shards.append(train_worker.write_shard(path, SPEC, tokens, ids % SPEC.num_classes))
    start += n
  meta = records.DatasetMetadata(
    tokenizer="test",
    seq_len=SPEC.seq_len,
    codebook_size=SPEC.codebook_size,
    num_classes=SPEC.num_classes,
    num_records=start,
    augmentation="none",
    source="synthetic",
    shards=tuple(shards),
  )
  records.write_metadata(data_dir, meta)
  return str(data_dir)


def _ids(batches) -> list[int]:
  return [int(i) for batch in batches for i in batch["tokens"][:, 0]]


def _take(iterator, n: int) -> list[dict]:
  return list(itertools.islice(iterator, n))


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b, strict=True):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_shapes_and_dtypes(data_dir):
  ds = pipeline.make_dataset(data_dir, global_batch=8, seed=0, process_count=2)
  batch = next(iter(ds))
  assert batch["tokens"].shape == (4, SPEC.seq_len) and batch["tokens"].dtype == np.int32
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  np.testing.assert_array_equal(batch["label"], batch["tokens"][:, 0] % SPEC.num_classes)


def test_batch_not_divisible(data_dir):
  with pytest.raises(ValueError, match="global_batch=6 .* process_count=4"):
    pipeline.make_dataset(data_dir, global_batch=6, seed=0, process_count=4)


@pytest.mark.parametrize("process_count, global_batch", [(2, 8), (4, 8), (5, 5)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_processes_read_disjoint_complete_parts(data_dir, process_count, global_batch, shuffle):
  per_process = [
    _ids(
      pipeline.make_dataset(
        data_dir,
        global_batch=global_batch,
        seed=3,
        process_index=index,
        process_count=process_count,
        shuffle=shuffle,
        num_epochs=1,
      )
    )
    for index in range(process_count)
  ]
  expected = NUM_RECORDS // process_count  # 5 processes: one record left out
  assert all(len(ids) == len(set(ids)) == expected for ids in per_process)
  union = set().union(*per_process)
  assert len(union) == expected * process_count and union <= set(range(NUM_RECORDS))
  if not shuffle:
    assert per_process[1][:3] == [1, 1 + process_count, 1 + 2 * process_count]


def test_shuffle_is_seeded_and_reshuffles_each_epoch(data_dir):
  def epochs(seed):
    ds = pipeline.make_dataset(data_dir, global_batch=8, seed=seed, process_count=1)
    ids = _ids(_take(iter(ds), 2 * NUM_RECORDS // 8))
    return ids[:NUM_RECORDS], ids[NUM_RECORDS:]

  first, second = epochs(0)
  assert sorted(first) == sorted(second) == list(range(NUM_RECORDS))
  assert first != second and first != sorted(first)
  assert epochs(0) == (first, second) and epochs(1)[0] != first


def test_restore_state_is_exact(data_dir):
  ds = pipeline.make_dataset(data_dir, global_batch=8, seed=0, process_count=1)
  it = iter(ds)
  _take(it, 7)
  state = it.get_state()
  expected = _take(it, 20)  # crosses the epoch boundary at batch 12
  restored = iter(ds)
  restored.set_state(state)
  _assert_same(_take(restored, 20), expected)


def test_restore_through_orbax(data_dir, tmp_path):
  ds = pipeline.make_dataset(data_dir, global_batch=8, seed=0, process_count=1)
  it = iter(ds)
  _take(it, 5)
  options = ocp.CheckpointManagerOptions(max_to_keep=2)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    manager.save(
      5,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave({"step": np.array(5, np.int32)}),
        data=grain.checkpoint.CheckpointSave(it),
      ),
    )
    manager.wait_until_finished()
  expected = _take(it, 10)

  restored_it = iter(ds)
  with ocp.CheckpointManager(tmp_path / "ckpt", options=options) as manager:
    restored = manager.restore(
      manager.latest_step(),
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"step": np.array(0, np.int32)}),
        data=grain.checkpoint.CheckpointRestore(restored_it),
      ),
    )
  assert int(restored["state"]["step"]) == 5
  _assert_same(_take(restored["data"], 10), expected)


def test_to_global_on_mesh(data_dir):
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(4, 2, 1), ("data", "fsdp", "tensor"))
  sharding = NamedSharding(mesh, P(("data", "fsdp")))
  ds = pipeline.make_dataset(data_dir, global_batch=16, seed=0)
  local = next(iter(ds))
  batch = pipeline.to_global(local, sharding)
  for key, value in batch.items():
    assert value.shape == local[key].shape and value.dtype == np.int32
    assert value.sharding == sharding
    np.testing.assert_array_equal(np.asarray(value), local[key])
    for shard in value.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])
  first = pipeline.to_global(next(iter(ds)), sharding)
  np.testing.assert_array_equal(np.asarray(first["tokens"]), local["tokens"])


@pytest.mark.slow
def test_multiprocess_prefetch(data_dir):
  ds = pipeline.make_dataset(
    data_dir, global_batch=8, seed=0, process_index=1, process_count=2, worker_count=2
  )
  mine = set(range(1, NUM_RECORDS, 2))
  it = iter(ds)
  try:
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 8)  # one epoch of this process is 6 batches
  finally:
    it.close()
  for batch in expected:
    assert batch["tokens"].shape == (4, SPEC.seq_len) and batch["label"].shape == (4,)
  assert set(_ids(expected)) <= mine
  restored = iter(ds)
  try:
    restored.set_state(state)
    _assert_same(_take(restored, 8), expected)
  finally:
    restored.close()
