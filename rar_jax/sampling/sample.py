"""Sample sets for evaluation: N images (default 50,000 = 50 per class, the official protocol)
from an export, decoded by the tokenizer, as an ADM-evaluator `.npz` plus PNG grids.

  rar-sample --export=exports/rar_xl --output=samples/rar_xl \
      --tokenizer_weights=maskgit-vqgan-imagenet-f16-256.bin [--num_samples=50000]

Chunks of `batch_size` images are sampled over all devices of all hosts; each host decodes and
writes the rows it holds as `chunks/<chunk>-p<host>.npz` (written under a temporary name,
then renamed). A rerun skips every chunk whose files all exist, so an interrupted job resumes
(a full disk keeps every finished chunk and says so in one line);
the output directory must be shared by the hosts (gs:// or NFS). When every chunk is there,
process 0 writes `samples.npz` (`arr_0` uint8 [N, H, W, 3], `labels` [N]) and `grid.png`.
Sample i has class (i * C) // N: contiguous classes, 50 each for N = 50,000 and C = 1000.

`sample_set.json`, written before the first chunk, records what made the set: the export (its
path and a fingerprint of its export.json and params files), the tokenizer, the seed, the
sampling config, N, the chunk size, the host count and the class schedule. A rerun whose
settings differ in any of these is refused, naming the first differing field (chunks of two
settings never mix); `--overwrite` deletes the set's chunks, samples.npz and grid.png (only
files this command writes) and samples anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import runpy
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from rar_jax import sharding
from rar_jax.infra import (
  atomic_files,
  checkpoint_integrity,
  console,
  paths,
  run_config,
  user_errors,
)
from rar_jax.sampling import decoding, export, images

SAMPLES_FILE = "samples.npz"
GRID_FILE = "grid.png"
MANIFEST_FILE = "sample_set.json"
MANIFEST_VERSION = 1
_CHUNK_NAME = re.compile(r"\d{6}-p\d{3}\.npz")  # and their atomic_files temporaries:
_CHUNK_TEMP = re.compile(r"\.\d{6}-p\d{3}\.npz\.[0-9a-f]{32}\.tmp")
_HASHED_FILE_BYTES = 1 << 16  # export files up to this size are hashed whole, larger by size


def class_schedule(num_samples: int, num_classes: int) -> np.ndarray:
  """Class of each sample: contiguous blocks, as equal as possible."""
  return (np.arange(num_samples) * num_classes // num_samples).astype(np.int32)


def _chunk_path(out: epath.Path, chunk: int, host: int) -> epath.Path:
  return out / "chunks" / f"{chunk:06d}-p{host:03d}.npz"


def export_fingerprint(export_dir: str) -> str:
  """sha256 over the export's export.json and its params files: every file's name and size,
  and the bytes of the small ones (Orbax's metadata, with its save time)."""
  root = epath.Path(export_dir)
  digest = hashlib.sha256((root / export.EXPORT_FILE).read_bytes())
  for path in sorted(checkpoint_integrity.files_under(root / "params"), key=str):
    size = path.stat().length
    digest.update(f"{path.relative_to(root)}\0{size}\0".encode())
    if size <= _HASHED_FILE_BYTES:
      digest.update(path.read_bytes())
  return digest.hexdigest()


def manifest(
  exp: export.Export,
  num_samples: int,
  batch_size: int,
  seed: int,
  settings: decoding.SamplingConfig,
  export_dir: str | None = None,
  tokenizer_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """What makes a sample set (`sample_set.json`), as JSON-ready values in comparison order.

  Local paths (the export, the tokenizer's weights) are recorded absolute: the same files give
  the same record from any directory.
  """
  classes = class_schedule(num_samples, exp.model.num_classes)
  if export_dir is not None:
    export_dir = paths.absolute(export_dir)
  tokenizer = dict(tokenizer_config or exp.tokenizer)
  if tokenizer.get("weights"):
    tokenizer["weights"] = paths.absolute(tokenizer["weights"])
  fields = {
    "version": MANIFEST_VERSION,
    "export": export_dir,
    "export_fingerprint": None if export_dir is None else export_fingerprint(export_dir),
    "model": dataclasses.asdict(exp.model),
    "tokenizer": tokenizer,
    "image_size": exp.image_size,
    "num_samples": num_samples,
    "batch_size": batch_size,
    "processes": jax.process_count(),
    "seed": seed,
    "sampling": dataclasses.asdict(settings),
    "class_schedule": {
      "rule": "class of sample i = (i * num_classes) // num_samples",
      "num_classes": exp.model.num_classes,
      "sha256": hashlib.sha256(classes.tobytes()).hexdigest(),
    },
  }
  return json.loads(json.dumps(fields, default=str))  # as read back: lists, not tuples


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
  """'field: old value vs new value' of the first field where two manifests differ, or None."""
  a, b = run_config.flatten(old), run_config.flatten(new)
  for key in [*b, *(k for k in a if k not in b)]:
    if a.get(key, "(absent)") != b.get(key, "(absent)"):
      return f"{key}={a.get(key, '(absent)')!r} there, {key}={b.get(key, '(absent)')!r} now"
  return None


def _sampler_files(out: epath.Path) -> list[epath.Path]:
  """The files this command wrote into out: chunks (and temporaries), samples, grid, manifest."""
  found = [out / name for name in (SAMPLES_FILE, GRID_FILE, MANIFEST_FILE)]
  if (out / "chunks").exists():
    chunks = (out / "chunks").iterdir()
    found += [p for p in chunks if _CHUNK_NAME.fullmatch(p.name) or _CHUNK_TEMP.fullmatch(p.name)]
  return [p for p in found if p.exists()]


def check_output(out: epath.Path, wanted: Mapping[str, Any], overwrite: bool) -> None:
  """Refuses to add to a sample set made with other settings (or of unknown origin).

  Raises:
    FileExistsError: naming out, the first differing field with both values, and --overwrite.
  """
  if overwrite:
    return
  path = out / MANIFEST_FILE
  if path.exists():
    try:
      recorded = json.loads(path.read_text())
    except ValueError as e:
      raise FileExistsError(f"{path} is unreadable ({e}); pass --overwrite to start over") from e
    difference = first_difference(recorded, wanted)
    if difference:
      raise FileExistsError(
        f"{out} holds a sample set made with other settings ({difference}); pass --overwrite to"
        " delete it and sample anew, or choose another --output"
      )
  elif _sampler_files(out):
    raise FileExistsError(
      f"{out} holds samples but no {MANIFEST_FILE} (made by an older version?): their settings"
      " are unknown; pass --overwrite to delete them and sample anew, or choose another --output"
    )


def start_output(out: epath.Path, wanted: Mapping[str, Any], overwrite: bool) -> None:
  """Process 0: with overwrite, deletes the old set's files; then records `wanted`."""
  if overwrite:
    old = _sampler_files(out)
    for path in old:
      path.unlink()
    if old:
      console.info("--overwrite: deleted %d files of the previous sample set in %s", len(old), out)
  (out / "chunks").mkdir(parents=True, exist_ok=True)
  text = json.dumps(wanted, indent=2)
  path = out / MANIFEST_FILE
  if not path.exists() or path.read_text() != text:
    atomic_files.write_text(path, text)


def _write_npz(path: epath.Path, **arrays: np.ndarray) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_files.write_bytes(path, buffer.getvalue())


def generate(
  exp: export.Export,
  tokenizer,
  out: epath.Path,
  num_samples: int,
  batch_size: int,
  seed: int,
  settings: decoding.SamplingConfig,
  *,
  export_dir: str | None = None,
  tokenizer_config: Mapping[str, Any] | None = None,
  overwrite: bool = False,
) -> None:
  """Samples every missing chunk into out/chunks (see the module docstring).

  export_dir and tokenizer_config identify the export and the decoder in the manifest;
  overwrite deletes a previous set in out first instead of refusing one made otherwise.

  Raises:
    FileExistsError: out holds a set made with other settings (without overwrite).
  """
  mesh = sharding.make_mesh()
  if batch_size % sharding.data_parallel_size(mesh):
    raise ValueError(f"--batch_size={batch_size} is not divisible by {jax.device_count()} devices")
  host, hosts = jax.process_index(), jax.process_count()
  classes = class_schedule(num_samples, exp.model.num_classes)
  num_chunks = -(-num_samples // batch_size)
  wanted = manifest(exp, num_samples, batch_size, seed, settings, export_dir, tokenizer_config)
  check_output(out, wanted, overwrite)  # every host: each raises the same error
  multihost_utils.sync_global_devices("rar_jax.sampling.sample: output checked")
  if host == 0:
    start_output(out, wanted, overwrite)
  multihost_utils.sync_global_devices("rar_jax.sampling.sample: output started")
  done = np.array(
    [all(_chunk_path(out, c, h).exists() for h in range(hosts)) for c in range(num_chunks)]
  )
  done = multihost_utils.broadcast_one_to_all(done)  # every host samples the same chunks
  todo = [c for c in range(num_chunks) if not done[c]]
  console.info("%d of %d chunks to sample", len(todo), num_chunks)
  sampler = decoding.make_sampler(exp.model, settings)
  key = jax.random.key(seed)
  for chunk in console.Progress(len(todo), "chunks").iterate(todo):
    rows = np.resize(classes[chunk * batch_size : (chunk + 1) * batch_size], batch_size)
    key_c = jax.random.fold_in(key, chunk)
    mine = slice(host, None, hosts)  # each host decodes and writes every hosts-th row
    pictures = images.sample_images(
      sampler, mesh, exp.params, rows, key_c, tokenizer.decode, rows=mine
    )
    index = np.arange(chunk * batch_size, (chunk + 1) * batch_size)[mine]
    keep = index < num_samples
    path = _chunk_path(out, chunk, host)
    try:
      _write_npz(path, images=pictures[keep], index=index[keep])
    except Exception as err:
      if user_errors.disk_full(err) is None:
        raise
      finished = sum(_chunk_path(out, c, host).exists() for c in range(num_chunks))
      raise user_errors.DiskFullError(
        f"{user_errors.disk_full_cause(err)}: chunk {chunk} could not be written to {path}; "
        f"the {finished} finished chunks of {num_chunks} are kept; free some space and rerun "
        "the same command to sample the rest"
      ) from err


def assemble(out: epath.Path, num_samples: int, num_classes: int, batch_size: int) -> None:
  """Process 0: chunks -> samples.npz (arr_0, labels) and grid.png."""
  num_chunks = -(-num_samples // batch_size)
  pictures = None
  for c in range(num_chunks):
    for h in range(jax.process_count()):
      path = _chunk_path(out, c, h)
      try:
        part = np.load(io.BytesIO(path.read_bytes()))
      except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(f"{path}: corrupt chunk ({e}); delete it and rerun to resample it") from e
      if pictures is None:
        pictures = np.zeros((num_samples, *part["images"].shape[1:]), np.uint8)
      pictures[part["index"]] = part["images"]
  columns = min(16, len(pictures))
  rows = max(1, min(8, len(pictures) // columns))
  grid = images.image_grid(pictures[: columns * rows], columns)
  try:
    _write_npz(out / SAMPLES_FILE, arr_0=pictures, labels=class_schedule(num_samples, num_classes))
    atomic_files.write_bytes(out / GRID_FILE, images.png_bytes(grid))
  except Exception as err:
    if user_errors.disk_full(err) is None:
      raise
    raise user_errors.DiskFullError(
      f"{user_errors.disk_full_cause(err)}: {out / SAMPLES_FILE} could not be written; all "
      f"{num_chunks} chunks are kept; free some space and rerun the same command to assemble "
      "them"
    ) from err


if (
  __name__ == "__main__"
):  # `python -m rar_jax.sampling.sample` is the command rar_jax.commands.sample
  runpy.run_module("rar_jax.commands.sample", run_name="__main__", alter_sys=True)
