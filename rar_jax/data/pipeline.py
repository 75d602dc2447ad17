"""Grain input pipeline: pre-tokenized records -> per-process batches -> global jax.Arrays.

Pipeline per process: TokenRecordSource -> this process's strided slice -> seeded shuffle
(reshuffled every epoch) -> repeat -> threaded reads -> batch(local_batch, drop_remainder)
-> optional multiprocess prefetch. The iterator's `get_state`/`set_state` restore it exactly;
save it with `grain.checkpoint.CheckpointSave(iterator)` inside an orbax `ocp.args.Composite`.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import jax
import numpy as np

from rar_jax.data import holdout
from rar_jax.data.records import PathLike

Batch = dict[str, np.ndarray]


def local_batch_size(global_batch: int, process_count: int) -> int:
  """Per-process batch size; ValueError when global_batch does not split evenly."""
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(
      f"global_batch={global_batch} must be a positive multiple of process_count={process_count}"
    )
  return global_batch // process_count


def make_dataset(
  data_dir: PathLike,
  *,
  global_batch: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
  shuffle: bool = True,
  num_epochs: int | None = None,
  worker_count: int = 0,
  worker_buffer_size: int = 2,
  read_threads: int = 16,
  prefetch_buffer: int = 500,
) -> grain.IterDataset:
  """Returns a dataset of local batches {"tokens": int32 [local_B, L], "label": int32 [local_B]}
  of the records outside the data set's validation split (rar_jax.data.holdout).

  local_B = global_batch // process_count. Each process reads records i with
  i % process_count == process_index among the first process_count * (N // process_count), so
  every process sees the same number of records and the processes' records are disjoint.
  num_epochs=None repeats forever; batches span epoch boundaries and only the final partial
  batch is dropped. worker_count > 0 batches in that many spawned processes (`mp_prefetch`,
  each worker holding worker_buffer_size batches); read_threads and prefetch_buffer set the
  threaded reads of each pipeline copy. `iter()` of the result has exact get_state/set_state.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, {process_count})")
  batch = local_batch_size(global_batch, process_count)
  source = holdout.training_source(data_dir)  # a validation split is never trained on
  per_process = len(source) // process_count
  if per_process < batch:
    raise ValueError(
      f"{data_dir}: {len(source)} records give each of {process_count} processes "
      f"{per_process}, fewer than one local batch of {batch}"
    )
  ds = grain.MapDataset.source(source)[: per_process * process_count]
  ds = ds[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer)
  it_ds = ds.to_iter_dataset(read_options).batch(batch, drop_remainder=True)
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
      )
    )
  return it_ds


def to_global(local_batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict:
  """Assembles each process's [local_B, ...] arrays into global [global_B, ...] jax.Arrays.

  `sharding` splits the leading (batch) axis, e.g. NamedSharding(mesh, P(("data", "fsdp"))).
  """
  return {
    key: jax.make_array_from_process_local_data(sharding, value)
    for key, value in local_batch.items()
  }
