"""Parameters-only exports for sampling, from a training workdir or from official weights.

An export directory holds `params/` (an Orbax checkpoint of the parameters, float32 or
bfloat16), `export.json` (the model config, the sampling defaults, the tokenizer and the
image size) and `checksums.json` (the size and SHA-256 of every other file, as checkpoints
have). It is written into a temporary folder beside the output, the manifest last, and renamed
into place once complete; an existing output is refused unless --overwrite. `load` checks the
checksums, then restores the export onto any mesh with no optimizer state.

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
import uuid
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
from rar_jax.infra import (
  atomic_files,
  checkpoint_integrity,
  checkpointing,
  distributed,
  paths,
  user_errors,
)
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


class CorruptExportError(user_errors.UserError):
  """An export's file is missing or does not match its checksum (names the file)."""


def write(
  output: str,
  params: Any,
  cfg: ModelConfig,
  config: Mapping[str, Any],
  dtype: str = "float32",
  overwrite: bool = False,
) -> None:
  """Writes an export of params: into a temporary folder beside `output` (params, export.json,
  then the checksum manifest, last), renamed to `output` once complete, so that no half-written
  export ever carries its name. The rename is atomic on a local file system; on an object store
  it copies the objects (as atomic as the store's rename).

  Raises:
    FileExistsError: output exists and overwrite is False.
    user_errors.DiskFullError: the disk filled up; nothing is left at output (an export it
      replaces is kept).
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
  out = epath.Path(paths.absolute(output))  # Orbax: absolute paths only
  if out.exists() and not overwrite:
    raise FileExistsError(
      f"export output {output} already exists; pass --overwrite to replace it, or choose a new path"
    )
  params = jax.tree.map(lambda a: jnp.asarray(a, DTYPES[dtype]), params)
  meta = {
    "model": dataclasses.asdict(cfg),
    "dtype": dtype,
    "sampling": dict(config["sampling"]),
    "tokenizer": json.loads(ml_collections.ConfigDict(config["tokenizer"]).to_json()),
    "image_size": int(config["image_size"]),
  }
  token = distributed.from_process_0(secrets.randbits(31))  # one name on every process
  tmp = out.parent / f".{out.name}.{token:08x}.tmp"
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(tmp / "params", params)
      checkpointer.wait_until_finished()
    if jax.process_index() == 0:
      atomic_files.write_text(tmp / EXPORT_FILE, json.dumps(meta, indent=2))
      checkpoint_integrity.write_manifest(tmp)  # last: an export without it is incomplete
      _replace(tmp, out)
  except BaseException as err:  # ctrl-C too: nothing half-written is left
    if jax.process_index() == 0:
      _remove(tmp)
    if isinstance(err, Exception) and user_errors.disk_full(err) is not None:
      kept = "the export there before is kept" if out.exists() else "nothing was written there"
      raise user_errors.DiskFullError(
        f"{user_errors.disk_full_cause(err)}: the export to {output} could not be written; "
        f"{kept}; free some space and rerun"
      ) from err
    raise


def _remove(folder: epath.Path) -> None:
  """Removes a folder (a failed export's temporary one), ignoring errors: it never carries the
  export's name, so a leftover is harmless."""
  with contextlib.suppress(Exception):
    folder.rmtree()


def _replace(tmp: epath.Path, out: epath.Path) -> None:
  """Renames the finished export tmp to out; an export already at out is moved aside first and
  deleted once the new one is in place."""
  old = None
  if out.exists():
    old = out.parent / f".{out.name}.{uuid.uuid4().hex}.old"
    out.rename(old)
  tmp.rename(out)
  if old is not None:
    old.rmtree()


def verify(path: str) -> None:
  """Checks every file of an export against its checksum manifest (exports written before
  manifests existed are loaded with a warning).

  Raises:
    CorruptExportError: a file is missing or differs from its recorded size or SHA-256.
  """
  try:
    status = checkpoint_integrity.verify(epath.Path(path))
  except checkpoint_integrity.CorruptCheckpointError as err:
    raise CorruptExportError(f"export {path} is corrupt: {err}; export it again") from None
  if status == checkpoint_integrity.Status.UNVERIFIED:
    logging.warning(
      "Export %s has no %s (written by an older version): loading it unverified",
      path,
      checkpoint_integrity.MANIFEST,
    )


def load(path: str, mesh: Mesh | None = None) -> Export:
  """Restores an export onto mesh (default: all devices, data-parallel), float32 params, once
  its files match their checksums (`verify`)."""
  root = epath.Path(paths.absolute(path))  # Orbax: absolute paths only
  meta_path = root / EXPORT_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f"{meta_path} not found: {path} is not a rar_jax export")
  verify(os.fspath(root))
  meta = json.loads(meta_path.read_text())
  cfg = presets.ModelConfig(**meta["model"]).validate()
  mesh = mesh or sharding.make_mesh()
  abstract = rar.sharded_abstract_params(cfg, mesh, DTYPES[meta["dtype"]])
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
