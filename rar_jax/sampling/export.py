"""Parameters-only exports for sampling, from a training workdir or from official weights.

An export directory holds `params/` (an Orbax checkpoint of the parameters, float32 or
bfloat16) and `export.json` (the model config, the sampling defaults, the tokenizer and the
image size). `load` restores it onto any mesh with no optimizer state.

  rar-export --workdir=W [--step=S] --output=O [--dtype=bfloat16]
  rar-export --workdir=W --output=rar.bin --format=torch  # state dict
  rar-export --official=rar_xl.bin --config=configs/imagenet.py:XL --output=O
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import runpy
import secrets
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.infra import atomic_files, checkpointing, distributed, paths
from rar_jax.model import presets, rar
from rar_jax.model.presets import ModelConfig

EXPORT_FILE = "export.json"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Export:
  """A loaded export: everything the sampler needs."""

  model: ModelConfig
  params: Any
  sampling: dict[str, float]
  tokenizer: dict[str, Any]
  image_size: int


def write(
  output: str, params: Any, cfg: ModelConfig, config: Mapping[str, Any], dtype: str = "float32"
) -> None:
  """Writes an export of params to `output` (a local path, relative or not, or gs://).

  Everything is written into a temporary directory next to `output` (`.<name>.<hex>.tmp`) that
  is renamed to `output` once complete; if anything fails, the temporary directory is removed
  and `output` never appears. The rename is atomic on a local file system; on an object store
  it copies the objects (as atomic as the store's rename).

  Raises:
    ValueError: an unknown dtype.
    FileExistsError: `output` exists (an export is never overwritten).
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  out = epath.Path(paths.absolute(output))  # Orbax: absolute paths only
  if out.exists():
    raise FileExistsError(f"export output {out} already exists; choose a new path")
  params = jax.tree.map(lambda a: jnp.asarray(a, DTYPES[dtype]), params)
  token = distributed.from_process_0(secrets.randbits(31))  # one name on every process
  tmp = out.parent / f".{out.name}.{token:08x}.tmp"
  meta = {
    "model": dataclasses.asdict(cfg),
    "dtype": dtype,
    "sampling": dict(config["sampling"]),
    "tokenizer": json.loads(ml_collections.ConfigDict(config["tokenizer"]).to_json()),
    "image_size": int(config["image_size"]),
  }
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(tmp / "params", params)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
      atomic_files.write_text(tmp / EXPORT_FILE, json.dumps(meta, indent=2))
      tmp.rename(out)
  except BaseException:
    with contextlib.suppress(Exception):  # keep the original error, not a cleanup one
      checkpointer.close()  # no async write is left running into what is removed next
    if jax.process_index() == 0:
      with contextlib.suppress(OSError):
        tmp.rmtree(missing_ok=True)
    raise
  checkpointer.close()


def load(
  path: str, mesh: Mesh | None = None, rules: sharding.Rules = sharding.LOGICAL_RULES
) -> Export:
  """Restores an export onto mesh (default: all devices, data-parallel), float32 params."""
  root = epath.Path(paths.absolute(path))  # Orbax: absolute paths only
  meta_path = root / EXPORT_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f"{meta_path} not found: {path} is not a rar_jax export")
  meta = json.loads(meta_path.read_text())
  cfg = presets.ModelConfig(**meta["model"]).validate()
  mesh = mesh or sharding.make_mesh()
  abstract = rar.sharded_abstract_params(cfg, mesh, rules, DTYPES[meta["dtype"]])
  params = ocp.StandardCheckpointer().restore(root / "params", abstract)
  params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  return Export(cfg, params, meta["sampling"], meta["tokenizer"], meta["image_size"])


def params_from_workdir(workdir: str, step: int | None, cfg: ModelConfig, mesh: Mesh) -> Any:
  """Restores only the parameters of a training checkpoint (no optimizer state is read).

  step None: the newest checkpoint that passes its checksums and restores; newer ones that do
  not are skipped with a warning naming them (as training does; nothing is moved).

  Raises:
    FileNotFoundError: the workdir has no checkpoint, or none at `step`.
    checkpointing.NoUsableCheckpointError: no candidate restores; names the checkpoint(s)
      and the steps for --step.
  """
  manager = checkpointing.make_manager(
    workdir, {"every_steps": 1, "keep": 1, "keep_every": 0}, read_only=True
  )
  steps = sorted(manager.all_steps(), reverse=True)
  available = ", ".join(map(str, sorted(steps)))
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {manager.directory}")
  if step is not None and step not in steps:
    raise FileNotFoundError(
      f"no checkpoint at step {step} in {manager.directory}; pass --step=N with one of: {available}"
    )
  abstract = rar.sharded_abstract_params(cfg, mesh)

  def restore(s: int) -> Any:
    restored = manager.restore(
      s,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item={"params": abstract},
          restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract}),
          partial_restore=True,
        )
      ),
    )
    return restored.state["params"]

  candidates = steps if step is None else [step]
  found = checkpointing.first_restorable(manager, candidates, restore)
  if found is None:
    noun = "checkpoint" if len(candidates) == 1 else "checkpoints"
    tried = ", ".join(os.fspath(manager.directory / str(s)) for s in candidates)
    raise checkpointing.NoUsableCheckpointError(
      f"{noun} {tried} could not be restored (see the warnings above); pass --step=N "
      f"with another step (available: {available})"
    )
  restored_step, params, skipped = found
  if skipped:
    logging.warning(
      "Exporting checkpoint %d of %s: the newer %s could not be used",
      restored_step,
      manager.directory,
      ", ".join(map(str, skipped)),
    )
  return params


if (
  __name__ == "__main__"
):  # `python -m rar_jax.sampling.export` is the command rar_jax.commands.export
  runpy.run_module("rar_jax.commands.export", run_name="__main__", alter_sys=True)
