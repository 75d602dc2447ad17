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
from absl import app, flags
from etils import epath
from jax.experimental import multihost_utils
from PIL import Image
from tqdm import tqdm

from rar_jax import atomic_files, console, distributed, host_memory, sharding, tokenizers
from rar_jax.sampling import decoding, export
from rar_jax.training import previews

SAMPLES_FILE = "samples.npz"


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
    tokens = decoding.sample_on_mesh(
      sampler, mesh, exp.params, rows, jax.random.fold_in(key, chunk)
    )
    tokens = np.asarray(multihost_utils.process_allgather(tokens, tiled=True))
    index = np.arange(chunk * batch_size, (chunk + 1) * batch_size)
    mine = index[host::hosts]
    keep = mine < num_samples
    images = previews.to_uint8(tokenizer.decode(tokens[host::hosts]))
    _write_npz(_chunk_path(out, chunk, host), images=images[keep], index=mine[keep])


def assemble(out: epath.Path, num_samples: int, num_classes: int, batch_size: int) -> None:
  """Process 0: chunks -> samples.npz (arr_0, labels) and grid.png."""
  num_chunks = -(-num_samples // batch_size)
  images = None
  for c in range(num_chunks):
    for h in range(jax.process_count()):
      part = np.load(io.BytesIO(_chunk_path(out, c, h).read_bytes()))
      if images is None:
        images = np.zeros((num_samples, *part["images"].shape[1:]), np.uint8)
      images[part["index"]] = part["images"]
  with (out / SAMPLES_FILE).open("wb") as f:
    np.savez(f, arr_0=images, labels=class_schedule(num_samples, num_classes))
  columns = min(16, len(images))
  grid = previews.image_grid(images[: columns * max(1, min(8, len(images) // columns))], columns)
  with (out / "grid.png").open("wb") as f:
    Image.fromarray(grid).save(f, format="PNG")


def _cli() -> None:
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
  flags.mark_flags_as_required(["export", "output"])
  flags.register_validator("num_samples", lambda v: v > 0, "--num_samples must be positive")
  flags.register_validator("batch_size", lambda v: v > 0, "--batch_size must be positive")

  def main(argv: list[str]) -> None:
    console.setup()  # third-party INFO logging off unless --verbosity
    host_memory.retain_freed_memory()  # before JAX starts its threads
    del argv
    distributed.initialize()
    exp = export.load(export_dir.value)
    s = exp.sampling
    settings = decoding.SamplingConfig(
      guidance_scale=s["guidance_scale"] if guidance.value is None else guidance.value,
      guidance_power=s["guidance_power"] if power.value is None else power.value,
      temperature=s["temperature"] if temperature.value is None else temperature.value,
      top_k=top_k.value,
      top_p=top_p.value,
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

  app.run(main)


if __name__ == "__main__":
  _cli()
