"""Sample sets for evaluation: N images (default 50,000 = 50 per class, the official protocol)
from an export, decoded by the tokenizer, as an ADM-evaluator `.npz` plus PNG grids.

  python -m rar_jax.sampling.sample --export=exports/rar_xl --output=samples/rar_xl \
      --tokenizer_weights=maskgit-vqgan-imagenet-f16-256.bin [--num_samples=50000]

Chunks of `batch_size` images are sampled over all devices of all hosts; each host decodes and
writes the rows it holds as `chunks/<chunk>-p<host>.npz` (written under a temporary name,
then renamed). A rerun skips every chunk whose files all exist, so an interrupted job resumes;
the output directory must be shared by the hosts (gs:// or NFS). When every chunk is there,
process 0 writes `samples.npz` (`arr_0` uint8 [N, H, W, 3], `labels` [N]) and `grid.png`.
Sample i has class (i * C) // N: contiguous classes, 50 each for N = 50,000 and C = 1000.
"""

from __future__ import annotations

import io
import time

import jax
import numpy as np
from absl import flags
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from rar_jax import (
  atomic_files,
  console,
  distributed,
  entry_points,
  host_memory,
  sharding,
  tokenizers,
  workdir_lease,
)
from rar_jax.sampling import decoding, export, images

SAMPLES_FILE = "samples.npz"
GRID_FILE = "grid.png"


def class_schedule(num_samples: int, num_classes: int) -> np.ndarray:
  """Class of each sample: contiguous blocks, as equal as possible."""
  return (np.arange(num_samples) * num_classes // num_samples).astype(np.int32)


def _chunk_path(out: epath.Path, chunk: int, host: int) -> epath.Path:
  return out / "chunks" / f"{chunk:06d}-p{host:03d}.npz"


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
) -> None:
  """Samples every missing chunk into out/chunks (see the module docstring)."""
  mesh = sharding.make_mesh()
  if batch_size % sharding.data_parallel_size(mesh):
    raise ValueError(f"--batch_size={batch_size} is not divisible by {jax.device_count()} devices")
  host, hosts = jax.process_index(), jax.process_count()
  classes = class_schedule(num_samples, exp.model.num_classes)
  num_chunks = -(-num_samples // batch_size)
  (out / "chunks").mkdir(parents=True, exist_ok=True)
  done = np.array(
    [all(_chunk_path(out, c, h).exists() for h in range(hosts)) for c in range(num_chunks)]
  )
  done = multihost_utils.broadcast_one_to_all(done)  # every host samples the same chunks
  todo = [c for c in range(num_chunks) if not done[c]]
  console.info("%d of %d chunks to sample", len(todo), num_chunks)
  sampler = decoding.make_sampler(exp.model, settings)
  key = jax.random.key(seed)
  for chunk in tqdm(todo, desc="chunks", disable=host != 0):
    rows = np.resize(classes[chunk * batch_size : (chunk + 1) * batch_size], batch_size)
    key_c = jax.random.fold_in(key, chunk)
    mine = slice(host, None, hosts)  # each host decodes and writes every hosts-th row
    pictures = images.sample_images(
      sampler, mesh, exp.params, rows, key_c, tokenizer.decode, rows=mine
    )
    index = np.arange(chunk * batch_size, (chunk + 1) * batch_size)[mine]
    keep = index < num_samples
    _write_npz(_chunk_path(out, chunk, host), images=pictures[keep], index=index[keep])


def assemble(out: epath.Path, num_samples: int, num_classes: int, batch_size: int) -> None:
  """Process 0: chunks -> samples.npz (arr_0, labels) and grid.png."""
  num_chunks = -(-num_samples // batch_size)
  pictures = None
  for c in range(num_chunks):
    for h in range(jax.process_count()):
      part = np.load(io.BytesIO(_chunk_path(out, c, h).read_bytes()))
      if pictures is None:
        pictures = np.zeros((num_samples, *part["images"].shape[1:]), np.uint8)
      pictures[part["index"]] = part["images"]
  _write_npz(out / SAMPLES_FILE, arr_0=pictures, labels=class_schedule(num_samples, num_classes))
  columns = min(16, len(pictures))
  rows = max(1, min(8, len(pictures) // columns))
  grid = images.image_grid(pictures[: columns * rows], columns)
  atomic_files.write_bytes(out / GRID_FILE, images.png_bytes(grid))


def cli() -> None:
  """Console-script entry point (`rar-sample`): defines the flags (only here, so importers keep
  their own) and runs."""
  export_dir = flags.DEFINE_string("export", None, "Export directory (rar_jax.sampling.export).")
  output = flags.DEFINE_string("output", None, "Output directory (local or gs://).")
  num_samples = flags.DEFINE_integer("num_samples", 50_000, "Images to generate.")
  batch_size = flags.DEFINE_integer("batch_size", 256, "Global images per sampler call.")
  seed = flags.DEFINE_integer("seed", 42, "Sampling seed.")
  weights = flags.DEFINE_string("tokenizer_weights", None, "VQGAN weights file (VQGAN exports).")
  guidance = flags.DEFINE_float("guidance_scale", None, "Default: the export's.")
  power = flags.DEFINE_float("guidance_power", None, "Default: the export's.")
  temperature = flags.DEFINE_float("temperature", None, "Default: the export's.")
  top_k = flags.DEFINE_integer("top_k", 0, "Keep the k most likely codes (0: off, as official).")
  top_p = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0: off, as official).")
  window = flags.DEFINE_integer(
    "speculative_window", 0, "Speculative Jacobi window (0: the plain sampler; same samples law)."
  )
  flags.mark_flags_as_required(["export", "output"])
  flags.register_validator("num_samples", lambda v: v > 0, "--num_samples must be positive")
  flags.register_validator("batch_size", lambda v: v > 0, "--batch_size must be positive")

  def main(argv: list[str]) -> None:
    console.setup()  # third-party INFO logging off unless --verbosity
    host_memory.retain_freed_memory()  # before JAX starts its threads
    del argv
    distributed.initialize()
    workdir_lease.hold_for_process(output.value, "sampling")  # until exit: no other writer
    exp = export.load(export_dir.value)
    settings = decoding.SamplingConfig.from_group(
      exp.sampling,
      guidance_scale=guidance.value,
      guidance_power=power.value,
      temperature=temperature.value,
      top_k=top_k.value,
      top_p=top_p.value,
      speculative_window=window.value,
    )
    tok_cfg = {**exp.tokenizer, "weights": weights.value or exp.tokenizer.get("weights")}
    tokenizer = tokenizers.build(tok_cfg, exp.image_size)
    out = epath.Path(output.value)
    start = time.perf_counter()
    generate(exp, tokenizer, out, num_samples.value, batch_size.value, seed.value, settings)
    multihost_utils.sync_global_devices("rar_jax.sampling.sample: chunks written")
    if jax.process_index() == 0:
      assemble(out, num_samples.value, exp.model.num_classes, batch_size.value)
      rate = num_samples.value / (time.perf_counter() - start)
      console.info("Wrote %s (%.2f images/s this run)", out / SAMPLES_FILE, rate)

  entry_points.run(main, __name__)


if __name__ == "__main__":
  cli()
