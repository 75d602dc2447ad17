"""Pre-tokenize an image data set into `records` shards + `metadata.json`.

  rar-pretokenize --config=configs/pretokenize.py:<source> --output_dir=DIR \
      [--config.<key>=<value> ...] [--process_index=I --process_count=N | --distributed]
  python -m rar_jax.data.pretokenize --verify --output_dir=DIR   # reads every record

Sources (`config.source`):
  imagenet_tfds  `tfds.data_source(config.tfds_name, split=config.split, data_dir=...)`. Reading
                 prepared data needs no TensorFlow, but preparing ImageNet does, and the builder
                 needs BOTH ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in manual_dir:
                   tfds build imagenet2012 --data_dir=DATA --manual_dir=TARS \
                     --file_format=array_record    # single process: hours, ~150 GB
  image_folder   `config.path`/<class>/**/<image>: classes sorted by name give the labels (an
                 empty class folder keeps its index), files sorted (torchvision ImageFolder).
  jsonl          the official `maskgitvq.jsonl`, lines {"class_id": int, "tokens": [ints]};
                 already tokens, so no tokenizer runs. `config.jsonl` declares what made them.
  digits         scikit-learn's 8x8 digits (1797 images, grey 0..16), PixelTokenizer(17 levels).

Each source item (one image or JSONL line) becomes `augment.get_augmentation(...).num_crops`
records, in order. Items are split into shards of `config.records_per_shard` items; shard s is
written by host s % process_count as `records.shard_filename(split, s % process_count, s)`.
The VQGAN runs data-parallel on the host's local devices only, so hosts never synchronise.

Resuming and completion: a shard whose final file exists is skipped (ShardWriter writes under a
temporary name and renames on close). The first run stores the content-defining config keys and
the host count in `pretokenize_plan.json`; a rerun with a different plan is refused, so shards
of two layouts never mix. When its own shards are done, every host waits until all shard files
exist, counts their records (checked against the plan) and process 0 writes `metadata.json`.
No per-host lists are needed. A data dir with `metadata.json` and the same plan is a no-op,
unless shards it lists are missing: those are written again (after `--verify` named them bad
and they were deleted) and the metadata, its validation split included, is kept.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import json
import os
import runpy
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from array_record.python import array_record_module
from PIL import Image

from rar_jax import tokenizers
from rar_jax.data import augment, holdout, records
from rar_jax.infra import atomic_files, console
from rar_jax.tokenizers import vqgan
from rar_jax.tokenizers.pixel import PixelTokenizer

SOURCES = ("imagenet_tfds", "image_folder", "jsonl", "digits")
PLAN_FILENAME = "pretokenize_plan.json"
# Config keys that decide the records' content (stored in the plan); the rest only tune speed.
CONTENT_KEYS = (
  "source path tfds_name data_dir split augmentation image_size records_per_shard tokenizer jsonl"
).split()
# The defaults: configs/pretokenize.py at the repository root, beside this package.
CONFIG_FILE = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "configs",
  "pretokenize.py",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def make_config(source: str = "imagenet_tfds") -> ml_collections.ConfigDict:
  """The default config of one of SOURCES, as CONFIG_FILE (configs/pretokenize.py, which lists
  the keys) declares it: that file is the one source of the defaults.

  Raises:
    FileNotFoundError: no configs/pretokenize.py beside the package (not a checkout or the image).
    ValueError: an unknown source.
  """
  if not os.path.isfile(CONFIG_FILE):
    raise FileNotFoundError(
      f"{CONFIG_FILE} not found: the pretokenize defaults live in the repository's configs/"
    )
  spec = importlib.util.spec_from_file_location("_rar_jax_pretokenize_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(source)


# ---------------------------------------------------------------------------------------------
# Sources. Image sources have `load(i)` -> (uint8 [H, W, 3] or PIL image or float [H, W], label);
# JsonlSource has `read(start, stop)` -> (tokens, label) items. All: len, num_classes, description.


class TfdsSource:
  """Random access to a prepared TFDS data set with "image" and "label" features."""

  def __init__(self, name: str, split: str, data_dir: str | None):
    if data_dir is not None and not os.path.isdir(data_dir):
      raise FileNotFoundError(f"TFDS data_dir not found: {data_dir}")
    self._ds = tfds.data_source(name, split=split, data_dir=data_dir)
    self.num_classes = self._ds.dataset_info.features["label"].num_classes
    self.description = f"tfds:{name}/{split}"

  def __len__(self) -> int:
    return len(self._ds)

  def load(self, index: int) -> tuple[np.ndarray, int]:
    try:
      example = self._ds[index]
    except Exception as e:
      raise ValueError(f"{self.description}: cannot read example {index}: {e}") from e
    return example["image"], int(example["label"])


class ImageFolderSource:
  """`root/<class>/.../<file>` images; label = index of the class folder in sorted order."""

  def __init__(self, root: str):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    self.files: list[str] = []
    self.labels: list[int] = []
    for label, name in enumerate(classes):
      for folder, _, names in sorted(os.walk(os.path.join(root, name), followlinks=True)):
        found = [n for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        self.files += [os.path.join(folder, n) for n in found]
        self.labels += [label] * len(found)
    if not self.files:
      raise ValueError(f"no images under class subfolders of {root}")
    self.num_classes = len(classes)
    self.description = f"image_folder:{root}"

  def __len__(self) -> int:
    return len(self.files)

  def load(self, index: int) -> tuple[Image.Image, int]:
    path = self.files[index]
    try:
      with Image.open(path) as image:
        return image.convert("RGB"), self.labels[index]
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read image {path}: {e}") from e


class DigitsSource:
  """scikit-learn digits: float [8, 8] grey images in [0, 1] (value / 16), labels 0..9."""

  def __init__(self):
    from sklearn.datasets import load_digits

    digits = load_digits()
    self._images = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8]
    self._labels = digits.target.astype(np.int64)  # [1797]
    self.num_classes = 10
    self.description = "sklearn:digits"

  def __len__(self) -> int:
    return len(self._labels)

  def load(self, index: int) -> tuple[np.ndarray, int]:
    return self._images[index], int(self._labels[index])


class JsonlSource:
  """Pre-tokenized JSONL; one item per line. The file is indexed (line offsets) once."""

  def __init__(self, path: str, spec: records.RecordSpec):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"JSONL file not found: {path}")
    self.path, self.spec = path, spec
    self.num_classes = spec.num_classes
    self.description = f"jsonl:{path}"
    self._offsets = _line_offsets(path)  # [num_lines] int64 byte offsets
    if not len(self._offsets):
      raise ValueError(f"JSONL file {path} is empty: no lines to pretokenize")

  def __len__(self) -> int:
    return len(self._offsets)

  def read(self, start: int, stop: int) -> Iterator[tuple[np.ndarray, int]]:
    """Lines [start, stop) -> (tokens int [seq_len], label); ValueError names the line."""
    with open(self.path, "rb") as f:
      f.seek(int(self._offsets[start]))
      for index in range(start, stop):
        yield self._parse(f.readline(), line_number=index + 1)

  def _parse(self, line: bytes, line_number: int) -> tuple[np.ndarray, int]:
    where = f"{self.path} line {line_number}"
    try:
      item = json.loads(line)
    except ValueError as e:
      raise ValueError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(item, dict) or not {"class_id", "tokens"} <= set(item):
      raise ValueError(f'{where}: expected an object with "class_id" and "tokens"')
    tokens, label = item["tokens"], item["class_id"]
    if not isinstance(tokens, list) or len(tokens) != self.spec.seq_len:
      count = len(tokens) if isinstance(tokens, list) else type(tokens).__name__
      raise ValueError(f"{where}: expected {self.spec.seq_len} tokens, got {count}")
    array = np.asarray(tokens)
    if array.dtype.kind not in "iu" or not isinstance(label, int) or isinstance(label, bool):
      raise ValueError(f"{where}: tokens and class_id must be integers")
    try:
      self.spec.check(array, label)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    return array, label


def _line_offsets(path: str, block: int = 1 << 24) -> np.ndarray:
  """Byte offset of every line start (a final newline does not start a line)."""
  starts, size = [np.zeros(1, np.int64)], 0
  with open(path, "rb") as f:
    while chunk := f.read(block):
      newlines = np.flatnonzero(np.frombuffer(chunk, np.uint8) == ord("\n"))
      starts.append(newlines.astype(np.int64) + size + 1)
      size += len(chunk)
  offsets = np.concatenate(starts)
  return offsets[:-1] if offsets[-1] == size else offsets


def make_source(
  config: ml_collections.ConfigDict,
) -> TfdsSource | ImageFolderSource | DigitsSource | JsonlSource:
  """The source named by config.source; FileNotFoundError for a missing path."""
  if config.source in ("image_folder", "jsonl") and not config.path:
    raise ValueError(f"source {config.source!r} needs config.path")
  if config.source == "imagenet_tfds":
    return TfdsSource(config.tfds_name, config.split, config.data_dir)
  if config.source == "image_folder":
    return ImageFolderSource(config.path)
  if config.source == "jsonl":
    j = config.jsonl
    return JsonlSource(config.path, records.RecordSpec(j.seq_len, j.codebook_size, j.num_classes))
  if config.source == "digits":
    return DigitsSource()
  raise ValueError(f"unknown source {config.source!r}; use one of {list(SOURCES)}")


def make_tokenizer(config: ml_collections.ConfigDict) -> vqgan.Tokenizer | PixelTokenizer:
  """PixelTokenizer, or the VQGAN from config.tokenizer.weights on this host's devices."""
  return tokenizers.build(config.tokenizer, config.image_size)


# ---------------------------------------------------------------------------------------------
# Shards.


def shard_ranges(num_items: int, items_per_shard: int) -> list[range]:
  """Consecutive item ranges of items_per_shard (the last may be shorter)."""
  return [
    range(s, min(s + items_per_shard, num_items)) for s in range(0, num_items, items_per_shard)
  ]


def _prefetched(pool: concurrent.futures.Executor, fn, chunks: Sequence[range]) -> Iterator[list]:
  """[fn(i) for i in chunk] per chunk, computed in the pool one chunk ahead."""
  pending = None
  for chunk in chunks:
    submitted = [pool.submit(fn, i) for i in chunk]
    if pending is not None:
      yield [f.result() for f in pending]
    pending = submitted
  if pending is not None:
    yield [f.result() for f in pending]


def _encode(tokenizer: Any, crops: np.ndarray, batch: int) -> np.ndarray:
  """crops [n, H, W(, C)] (uint8, or float in [0, 1]), n <= batch -> int32 codes [n, L]."""
  images = crops.astype(np.float32)
  if crops.dtype == np.uint8:
    images /= 255.0
  padded = np.zeros((batch, *images.shape[1:]), np.float32)  # fixed shape: one compilation
  padded[: len(images)] = images
  return np.asarray(tokenizer.encode(padded))[: len(images)]


def _write_image_shard(
  source, tokenizer, aug, batch_size, pool, spec, path, items, progress: console.Progress
) -> None:
  """Loads and crops source items in the pool, tokenizes them batch by batch, writes records."""
  size = tokenizer.image_size
  per_step = max(1, batch_size // aug.num_crops)  # source items per tokenizer call
  dp = getattr(tokenizer, "data_parallel", 1)
  batch = -(-per_step * aug.num_crops // dp) * dp  # padded to the data-parallel devices

  def crops(index: int) -> tuple[np.ndarray, int]:
    image, label = source.load(index)
    return aug.apply(image, size), label

  chunks = [items[i : i + per_step] for i in range(0, len(items), per_step)]
  with records.ShardWriter(path, spec) as writer:
    for loaded in _prefetched(pool, crops, chunks):
      codes = _encode(tokenizer, np.concatenate([c for c, _ in loaded]), batch)
      labels = np.repeat([label for _, label in loaded], aug.num_crops)
      for row, label in zip(codes, labels, strict=True):
        writer.write(row, int(label))
      progress.advance(len(loaded))


def _write_jsonl_shard(
  source: JsonlSource, path: str, items: range, progress: console.Progress
) -> None:
  with records.ShardWriter(path, source.spec) as writer:
    for tokens, label in source.read(items.start, items.stop):
      writer.write(tokens, label)
      progress.advance(1)


def _num_records(path: str) -> int:
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return reader.num_records()
  finally:
    reader.close()


def _wait_for(paths: Sequence[str], timeout_s: float) -> None:
  """Polls (0.1 s doubling to 10 s) until every path is a complete shard."""
  deadline, delay = time.monotonic() + timeout_s, 0.1
  while missing := [p for p in paths if not records.shard_is_complete(p)]:
    if time.monotonic() > deadline:
      raise TimeoutError(f"{len(missing)} shards still missing after {timeout_s}s: {missing[0]}")
    logging.log_every_n_seconds(logging.INFO, "waiting for %d shards", 60, len(missing))
    time.sleep(delay)
    delay = min(2 * delay, 10.0)


# ---------------------------------------------------------------------------------------------
# Plan file and the driver.


def _plan(config: ml_collections.ConfigDict, process_count: int, tokenizer: Any) -> dict:
  plan = {key: config.to_dict()[key] for key in CONTENT_KEYS}
  if tokenizer is not None:  # injected: its name stands for the tokenizer config
    plan["tokenizer"] = tokenizer.name
  return json.loads(json.dumps({**plan, "process_count": process_count}))  # tuples -> lists


def _check_plan(output_dir: str, plan: dict) -> bool:
  """True when output_dir has a plan; ValueError when it differs from `plan`."""
  path = os.path.join(output_dir, PLAN_FILENAME)
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    stored = json.load(f)
  diff = [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in plan.items() if stored.get(k) != v]
  if diff:
    raise ValueError(
      f"{output_dir} was written with a different config ({'; '.join(diff)}); rerun with the "
      "original values or use a new --output_dir"
    )
  return True


def _write_plan(output_dir: str, plan: dict) -> None:
  path = os.path.join(output_dir, PLAN_FILENAME)
  atomic_files.write_text(path, json.dumps(plan, indent=2))


def _prepare(config: ml_collections.ConfigDict, tokenizer: Any, pool) -> tuple:
  """Source, tokenizer name, record spec, records per item and the shard writer."""
  source = make_source(config)
  if isinstance(source, JsonlSource):
    write = functools.partial(_write_jsonl_shard, source)
    return source, config.jsonl.tokenizer_name, source.spec, 1, write
  aug = augment.get_augmentation(config.augmentation)
  tokenizer = make_tokenizer(config) if tokenizer is None else tokenizer
  spec = records.RecordSpec(tokenizer.seq_len, tokenizer.codebook_size, source.num_classes)
  write = functools.partial(
    _write_image_shard, source, tokenizer, aug, config.batch_size, pool, spec
  )
  return source, tokenizer.name, spec, aug.num_crops, write


def _write_mine(write, paths: list[str], shards: list[range], index: int, count: int) -> None:
  """Writes host `index`'s shards (s % count == index) that are not complete yet."""
  mine = range(index, len(shards), count)
  todo = [s for s in mine if not records.shard_is_complete(paths[s])]
  console.info("%d shards; host %d writes %d of its %d", len(shards), index, len(todo), len(mine))
  total = sum(len(shards[s]) for s in todo)
  progress = console.Progress(total, f"host {index}: items")
  for s in todo:
    write(paths[s], shards[s], progress)


def _count_shards(paths: Sequence[str], shards: Sequence[range], crops: int) -> list:
  """ShardInfo per shard; ValueError when a shard's count does not match its items."""
  infos = []
  for path, items in zip(paths, shards, strict=True):
    found, expected = _num_records(path), len(items) * crops
    if found != expected:
      raise ValueError(f"shard {path} holds {found} records, expected {expected}")
    infos.append(records.ShardInfo(os.path.basename(path), found))
  return infos


def run(
  config: ml_collections.ConfigDict,
  output_dir: str,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  tokenizer: Any = None,
) -> records.DatasetMetadata:
  """Writes this host's missing shards, waits for all hosts' shards and returns the metadata.

  tokenizer: anything with name/seq_len/codebook_size/image_size/encode; None builds it from
  config.tokenizer. process_index/process_count default to jax's. Process 0 writes
  metadata.json; a complete output_dir is returned as is.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} is outside [0, {count})")
  if config.records_per_shard <= 0 or config.batch_size <= 0:
    raise ValueError("records_per_shard and batch_size must be positive")
  plan = _plan(config, count, tokenizer)
  has_plan = _check_plan(output_dir, plan)
  existing = None
  if os.path.isfile(os.path.join(output_dir, records.METADATA_FILENAME)):
    existing = records.read_metadata(output_dir)
    gone = [s.file for s in existing.shards if not records.shard_is_complete(_in(output_dir, s))]
    if not gone:
      console.info("%s is already complete; nothing to do", output_dir)
      return existing
    console.info(
      "%d shards of %s are missing (e.g. %s): writing them again", len(gone), output_dir, gone[0]
    )

  with concurrent.futures.ThreadPoolExecutor(config.num_workers) as pool:
    source, name, spec, crops, write = _prepare(config, tokenizer, pool)
    os.makedirs(output_dir, exist_ok=True)
    if not has_plan:
      _write_plan(output_dir, plan)
    shards = shard_ranges(len(source), config.records_per_shard)
    names = [records.shard_filename(config.split, s % count, s) for s in range(len(shards))]
    paths = [os.path.join(output_dir, n) for n in names]
    _write_mine(write, paths, shards, index, count)

  _wait_for(paths, config.wait_timeout_s)
  infos = _count_shards(paths, shards, crops)
  if existing is not None:  # shards rewritten: the metadata (and its validation split) stands
    if tuple(infos) != existing.shards:
      raise ValueError(
        f"the rewritten shards of {output_dir} do not match its {records.METADATA_FILENAME} "
        "(another source?); move the data set away and pretokenize it anew"
      )
    return existing
  meta = records.DatasetMetadata(
    tokenizer=name,
    seq_len=spec.seq_len,
    codebook_size=spec.codebook_size,
    num_classes=spec.num_classes,
    num_records=sum(info.num_records for info in infos),
    augmentation=config.augmentation,
    source=source.description,
    shards=tuple(infos),
  )
  if index == 0:
    records.write_metadata(output_dir, meta)
  return meta


def _in(output_dir: str, shard: records.ShardInfo) -> str:
  return os.path.join(output_dir, shard.file)


def verify(data_dir: str) -> records.DatasetMetadata:
  """Reads every record of the data set in data_dir (`records.verify`); prints one line per bad
  shard on stdout, then raises if there is any.

  Raises:
    records.CorruptShardError: naming how many shards are bad, the first of them, and how to
      rewrite them (delete them and rerun the same rar-pretokenize command).
  """
  meta, problems = records.verify(data_dir)
  for problem in problems:
    print(f"bad shard {_in(data_dir, records.ShardInfo(problem.file, 0))}: {problem.message}")
  if problems:
    names = ", ".join(p.file for p in problems[:3]) + (", ..." if len(problems) > 3 else "")
    raise records.CorruptShardError(
      f"{len(problems)} of {len(meta.shards)} shards in {data_dir} are bad ({names}; listed "
      "above): delete them and rerun the same rar-pretokenize command to write them again"
    )
  console.info(
    "%s: all %d records of %d shards verify", data_dir, meta.num_records, len(meta.shards)
  )
  return meta


DIGITS_HELD_OUT = 297  # of the 1,797 digits: 1,500 train, 297 are the validation split


def ensure_digits(data_dir: str) -> records.DatasetMetadata:
  """The embedded digits data set in data_dir, with its fixed validation split (seed 0):
  built on first use, then just read."""
  run(make_config("digits"), data_dir, process_index=0, process_count=1)
  return holdout.add_split(data_dir, DIGITS_HELD_OUT, seed=0)


if (
  __name__ == "__main__"
):  # `python -m rar_jax.data.pretokenize` is the command rar_jax.commands.pretokenize
  runpy.run_module("rar_jax.commands.pretokenize", run_name="__main__", alter_sys=True)
