"""Orbax checkpoints of the train state together with the Grain iterator state, and the run's
config (`config.json`) beside them.

Each checkpoint step directory holds `state` (sharded arrays, restored straight onto the current
mesh, whatever mesh saved it) and `data_iter` (this process's Grain iterator state). Saves are
asynchronous; Orbax only lists a step once it is complete, so a save cut short never counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rar_jax import atomic_files, console
from rar_jax.training.train_state import TrainState

CONFIG_FILE = "config.json"  # the run's config, beside its checkpoints


def write_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records the run's config in <workdir>/config.json (process 0), for export and sampling."""
  if jax.process_index() == 0:
    path = epath.Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    atomic_files.write_text(path / CONFIG_FILE, config.to_json(indent=2))


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training workdir was run with (its config.json).

  Raises:
    FileNotFoundError: workdir has no config.json, naming the path.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a rar_jax training workdir?")
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def make_manager(
  workdir: str, ckpt_cfg: Mapping[str, Any], read_only: bool = False
) -> ocp.CheckpointManager:
  """CheckpointManager for `<workdir>/checkpoints` (local path or gs://).

  Keys of ckpt_cfg: every_steps (save interval), keep (the last K), keep_every (also keep every
  M-th step for good; 0 = none). read_only: for readers beside a live run (export), which
  must neither create nor clean up anything.
  """
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=ckpt_cfg["every_steps"],
    max_to_keep=ckpt_cfg["keep"],
    keep_period=ckpt_cfg["keep_every"] or None,
    enable_async_checkpointing=True,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
  )
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # Orbax needs absolute local paths
  directory = epath.Path(workdir) / "checkpoints"
  return ocp.CheckpointManager(directory, item_names=("state", "data_iter"), options=options)


def save(
  manager: ocp.CheckpointManager, step: int, state: TrainState, data_iter: Any, *, force=False
) -> bool:
  """Starts an async save of the state after `step` updates (skipped unless the interval says
  so, or force)."""
  return manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(data_iter)
    ),
    force=force,
  )


def restore_latest(
  manager: ocp.CheckpointManager, abstract_state: TrainState, data_iter: Any
) -> TrainState | None:
  """Restores the newest readable checkpoint onto abstract_state's shardings.

  The data iterator is restored in place. A checkpoint that fails to restore (corrupt or
  truncated files) is skipped with a warning naming it, and the one before it is tried.

  Returns:
    The restored state, or None when the workdir has no checkpoint (a fresh run).

  Raises:
    RuntimeError: checkpoints exist but none restores (e.g. the model config or the number of
      processes changed): starting over would overwrite them, so the job stops instead.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  for step in steps:
    try:
      restored = manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        ),
      )
    except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
      path = os.fspath(manager.directory / str(step))
      logging.warning(
        "Skipping checkpoint %s: it could not be restored (%s: %s)", path, type(err).__name__, err
      )
      continue
    console.info("Restored checkpoint at step %d from %s", step, manager.directory)
    return restored.state
  if steps:
    raise RuntimeError(
      f"none of the checkpoints {steps} in {manager.directory} could be restored (see the "
      "warnings above); fix the config or move them away to start afresh"
    )
  return None
