"""A tiny training run, importable by the tests and runnable as a subprocess that the tests
interrupt (SIGKILL / SIGTERM).

  python tests/helpers/train_worker.py WORKDIR DATA_DIR STEPS [PAUSE_AT_STEP]

With PAUSE_AT_STEP, the run prints "PAUSED <step>" once the checkpoint at that step is on disk
and then idles for a few seconds, giving the test a moment mid-training to send a signal.
"""

import os
import sys

import numpy as np

SEQ_LEN, CODES, CLASSES = 16, 32, 10


def write_shard(path, spec, tokens: np.ndarray, labels: np.ndarray):
  """Writes tokens [N, seq_len] and labels [N] as one complete shard; returns its ShardInfo."""
  from rar_jax.data import records

  with records.ShardWriter(path, spec) as writer:
    for row, label in zip(tokens, labels, strict=True):
      writer.write(row, int(label))
  return records.ShardInfo(os.path.basename(writer.path), writer.num_records)


def write_random_dataset(data_dir: str, num_records: int = 96, seed: int = 0) -> str:
  from rar_jax.data import records

  os.makedirs(data_dir, exist_ok=True)
  spec = records.RecordSpec(seq_len=SEQ_LEN, codebook_size=CODES, num_classes=CLASSES)
  rng = np.random.default_rng(seed)
  half = num_records // 2
  shards = tuple(
    write_shard(
      os.path.join(data_dir, records.shard_filename("train", 0, i)),
      spec,
      rng.integers(0, CODES, (half, SEQ_LEN)),
      rng.integers(0, CLASSES, half),
    )
    for i in range(2)
  )
  meta = records.DatasetMetadata(
    tokenizer="random",
    seq_len=SEQ_LEN,
    codebook_size=CODES,
    num_classes=CLASSES,
    num_records=2 * half,
    augmentation="none",
    source="test",
    shards=shards,
  )
  records.write_metadata(data_dir, meta)
  return data_dir


def tiny_config(data_dir: str, steps: int):
  from configs import common

  c = common.base_config()
  c.seed = 7
  c.model.variant = ""
  c.model.width, c.model.depth, c.model.heads, c.model.mlp_dim = 32, 2, 4, 64
  c.model.seq_len, c.model.codebook_size, c.model.num_classes = SEQ_LEN, CODES, CLASSES
  c.model.dtype = "float32"
  c.train.steps, c.train.global_batch, c.train.log_every = steps, 16, 1
  c.optim.warmup_steps = 2
  c.checkpoint.every_steps, c.checkpoint.keep, c.checkpoint.keep_every = 3, 10, 0
  c.mesh.shape = (-1, 1, 1)
  c.data.dir = data_dir
  return c


def pause_after_checkpoint(pause_at: int | None, seconds: float = 5) -> None:
  """Makes the training job print "PAUSED <step>" once the checkpoint at pause_at is on disk,
  then idle for a few seconds (the moment a test sends its signal)."""
  from rar_jax.infra import checkpointing

  save = checkpointing.save

  def save_then_pause(manager, step, *args, **kwargs):
    saved = save(manager, step, *args, **kwargs)
    if step == pause_at:
      import time

      manager.wait_until_finished()
      print(f"PAUSED {step}", flush=True)
      time.sleep(seconds)
    return saved

  checkpointing.save = save_then_pause


def main(argv):
  workdir, data_dir, steps = argv[1], argv[2], int(argv[3])
  pause_at = int(argv[4]) if len(argv) > 4 else None
  from rar_jax.infra import user_errors
  from rar_jax.training import train

  pause_after_checkpoint(pause_at)
  # Tests resume a run with more steps than it was started with (train.steps changes). As in
  # the commands, user errors and stops by a signal print one line and exit with their status.
  config = tiny_config(data_dir, steps)
  state = user_errors.call(train.train_and_evaluate, config, workdir, True)
  print(f"DONE {int(state.step)}", flush=True)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  main(sys.argv)
