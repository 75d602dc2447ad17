"""Orbax checkpoints of the train state together with the Grain iterator state, and the run's
config (`config.json`) beside them.

Each checkpoint step directory holds `state` (sharded arrays, restored straight onto the current
mesh, whatever mesh saved it), `data_iter` (this process's Grain iterator state) and
`checksums.json` (see checkpoint_integrity). Saves are asynchronous; Orbax only lists a step
once it is complete, so a save cut short never counts. Before each save the directory is probed
for writing, so that a permission or quota error stops the job at once, naming the path.

A checkpoint that fails its checksums or its restore is skipped with a warning; once an older
one restored, the skipped newer ones are moved to `checkpoints/corrupt/<step>-<time>` (kept,
never deleted), so the run can save those steps again.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from rar_jax.infra import (
  atomic_files,
  checkpoint_integrity,
  console,
  distributed,
  paths,
  user_errors,
)

T = TypeVar("T")
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


class NoUsableCheckpointError(user_errors.UserError):
  """Checkpoints exist but none verifies and restores (names them and what to do)."""


class CheckpointSaveError(user_errors.UserError):
  """A checkpoint could not be written (names the path and the cause)."""


def validate(ckpt_cfg: Mapping[str, Any]) -> None:
  """Checks the checkpoint config; raises ValueError naming the bad key and value."""
  if ckpt_cfg["keep"] < 1:
    raise ValueError(
      f"checkpoint.keep must be >= 1 (the last K checkpoints are kept), got {ckpt_cfg['keep']}"
    )
  if ckpt_cfg["keep_every"] < 0:
    raise ValueError(f"checkpoint.keep_every must be >= 0 (0 = none), got {ckpt_cfg['keep_every']}")


def probe_writable(directory: epath.Path, latest: int | None = None) -> None:
  """Creates and removes a small file in directory (on every process).

  Raises:
    CheckpointSaveError: some process cannot write there (permission, quota, not a directory),
      naming the path and the OS error; nothing of the existing checkpoints was touched.
  """
  probe = directory / f".write-probe-{jax.process_index()}-{uuid.uuid4().hex}"
  error = None
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(b"probe")
    probe.unlink()
  except Exception as err:  # noqa: BLE001 - on gs:// the file layer raises its own error types
    error = err
  if distributed.any_process(error is not None):
    kept = "no checkpoint yet" if latest is None else f"the checkpoint at step {latest} is kept"
    if error is not None and user_errors.disk_full(error) is not None:
      raise CheckpointSaveError(_disk_full_message(error, directory, kept)) from error
    cause = "another process could not write there (see its log)"
    if error is not None:
      cause = f"{type(error).__name__}: {error}"
    raise CheckpointSaveError(f"cannot write checkpoints to {directory} ({cause}); {kept}")


def committed_steps(directory: epath.Path) -> list[int]:
  """The steps Orbax committed in directory, sorted, read from the disk (a save in flight or
  cut short is not one: its folder is temporary, or on gs:// has no commit marker yet)."""
  try:
    paths = list(directory.iterdir()) if directory.exists() else []
  except OSError:
    return []
  return sorted(
    int(path.name) for path in paths if path.name.isdigit() and ocp.step.is_path_finalized(path)
  )


def _disk_full_message(error: BaseException, directory: epath.Path, kept: str) -> str:
  """'no space left on device: a checkpoint could not be saved to D; the checkpoint at step 6
  is kept; free some space and rerun the same command'."""
  return (
    f"{user_errors.disk_full_cause(error)}: a checkpoint could not be saved to {directory}; "
    f"{kept}; free some space and rerun the same command"
  )


def describe_kept(directory: epath.Path) -> str:
  """'the checkpoint at step N is kept' (the newest committed step on disk), for messages."""
  steps = committed_steps(directory)
  return f"the checkpoint at step {steps[-1]} is kept" if steps else "no checkpoint was written"


class Manager(ocp.CheckpointManager):
  """A CheckpointManager that probes its directory before each save, records checksums of each
  step once Orbax committed it, and reports a failed save as one CheckpointSaveError."""

  def save(self, step: int, *args: Any, **kwargs: Any) -> bool:
    if not kwargs.get("force") and not self.should_save(step):
      return False
    try:
      if not self._options.read_only:
        # Orbax would otherwise start the save, fail creating its folder in a background thread
        # and leave threads waiting on that folder's signal for the coordination timeout.
        probe_writable(self.directory, self.latest_step())
      return super().save(step, *args, **kwargs)  # first waits for the previous save
    except CheckpointSaveError:
      raise
    except Exception as err:
      raise self._failed(err, step) from err

  def wait_until_finished(self) -> None:
    try:
      super().wait_until_finished()
    except Exception as err:
      raise self._failed(err, None) from err

  def _failed(self, err: BaseException, step: int | None) -> CheckpointSaveError:
    """One error for a failed save: a full disk in short, naming what is kept; else the cause."""
    if user_errors.disk_full(err) is not None:  # this save's or the previous one's
      return CheckpointSaveError(
        _disk_full_message(err, self.directory, describe_kept(self.directory))
      )
    if step is None:
      return CheckpointSaveError(
        f"a checkpoint save to {self.directory} failed ({type(err).__name__}: {err})"
      )
    return CheckpointSaveError(
      f"saving checkpoint {step} to {self.directory} failed ({type(err).__name__}: {err})"
    )

  def _finalize(self, step: int, steps_to_remove: list[int]) -> None:
    """Orbax's commit of a step (in its finalize thread, after a barrier of all processes),
    then process 0 records the checksums of every file the processes wrote."""
    super()._finalize(step, steps_to_remove)
    step_dir = self.directory / str(step)
    if jax.process_index() == 0 and ocp.step.is_path_finalized(step_dir):
      try:
        checkpoint_integrity.write_manifest(step_dir)
      except Exception as err:  # noqa: BLE001 - the step is committed; it stays unverified
        logging.warning(
          "No checksums for checkpoint %s (%s: %s): it will be restored unverified",
          step_dir,
          type(err).__name__,
          err,
        )


def make_manager(
  workdir: str, ckpt_cfg: Mapping[str, Any], read_only: bool = False
) -> ocp.CheckpointManager:
  """CheckpointManager for `<workdir>/checkpoints` (local path or gs://).

  Keys of ckpt_cfg: every_steps (save interval), keep (the last K, >= 1), keep_every (also keep
  every M-th step for good; 0 = none). read_only: for readers beside a live run (export), which
  must neither create nor clean up anything.
  """
  validate(ckpt_cfg)
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=ckpt_cfg["every_steps"],
    max_to_keep=ckpt_cfg["keep"],  # >= 1: the newest (the final) step is always kept
    keep_period=ckpt_cfg["keep_every"] or None,
    enable_async_checkpointing=True,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
    read_only=read_only,
  )
  directory = epath.Path(paths.absolute(workdir)) / "checkpoints"  # Orbax: absolute only
  return Manager(directory, item_names=("state", "data_iter"), options=options)


def save(
  manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any, *, force=False
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


def checksums_match(directory: epath.Path, step: int) -> bool:
  """Whether checkpoint `step` may be restored: process 0 checks its files against the manifest
  (all processes get its verdict). A mismatch is logged naming the file; a step without
  manifest is logged as unverified and may be restored."""
  step_dir = directory / str(step)
  status = checkpoint_integrity.Status.VERIFIED
  if jax.process_index() == 0:
    try:
      status = checkpoint_integrity.verify(step_dir)
    except Exception as err:  # noqa: BLE001 - the other processes wait for this verdict
      logging.warning("Skipping checkpoint %s: it is corrupt (%s)", step_dir, err)
      status = checkpoint_integrity.Status.CORRUPT
    if status == checkpoint_integrity.Status.UNVERIFIED:
      logging.warning(
        "Checkpoint %s has no %s (saved by an older version, or cut short): restoring it "
        "unverified",
        step_dir,
        checkpoint_integrity.MANIFEST,
      )
  return distributed.from_process_0(int(status)) != checkpoint_integrity.Status.CORRUPT


def first_restorable(
  manager: ocp.CheckpointManager, steps: list[int], restore: Callable[[int], T]
) -> tuple[int, T, list[int]] | None:
  """Tries steps in order; a step that fails its checksums or its restore is skipped with a
  warning naming it. Returns (step, restored, the steps skipped before it), or None."""
  skipped = []
  for step in steps:
    if not checksums_match(manager.directory, step):
      skipped.append(step)
      continue
    restored, failed = None, False
    try:
      restored = restore(step)
    except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
      path = os.fspath(manager.directory / str(step))
      logging.warning(
        "Skipping checkpoint %s: it could not be restored (%s: %s)", path, type(err).__name__, err
      )
      failed = True
    if distributed.any_process(failed):  # every process moves on to the same step
      skipped.append(step)
      continue
    return step, restored, skipped
  return None


def set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unusable steps to checkpoints/corrupt/<step>-<time> (process 0; kept for a look,
  never deleted) so that the run can save those steps again."""
  if not steps:
    return
  error = None
  if jax.process_index() == 0:
    try:
      _move_aside(manager.directory, steps)
    except Exception as err:  # noqa: BLE001 - reported on every process below
      error = f"{type(err).__name__}: {err}"
  if distributed.from_process_0(error is not None):
    cause = error or "process 0 could not move them (see its log)"
    raise CheckpointSaveError(
      f"cannot move the unusable checkpoints {steps} aside in {manager.directory} ({cause}); "
      "move them away yourself and rerun"
    )
  manager.reload()


def _move_aside(directory: epath.Path, steps: list[int]) -> None:
  """Renames each step folder to directory/corrupt/<step>-<time>, with a warning each."""
  aside = directory / "corrupt"
  aside.mkdir(parents=True, exist_ok=True)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  for step in steps:
    target = aside / f"{step}-{stamp}"
    (directory / str(step)).rename(target)
    logging.warning(
      "Moved the unusable checkpoint %d aside to %s (kept, not deleted); it will be "
      "trained and saved again",
      step,
      target,
    )


def restore_latest(
  manager: ocp.CheckpointManager, abstract_state: Any, data_iter: Any
) -> Any | None:
  """Restores the newest readable checkpoint onto abstract_state's shardings.

  The data iterator is restored in place. A checkpoint that fails its checksums or its restore
  (corrupt or truncated files) is skipped with a warning naming it, and the one before it is
  tried; once one restored, the skipped newer ones are set aside (see `set_aside`).

  Returns:
    The restored state, or None when the workdir has no checkpoint (a fresh run).

  Raises:
    NoUsableCheckpointError: checkpoints exist but none restores (e.g. the model config or
      the number of processes changed): starting over would overwrite them, so the job stops.
  """
  steps = sorted(manager.all_steps(), reverse=True)

  def restore(step: int) -> Any:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
      ),
    )
    return restored.state

  found = first_restorable(manager, steps, restore)
  if found is not None:
    step, state, skipped = found
    set_aside(manager, skipped)
    console.info("Restored checkpoint at step %d from %s", step, manager.directory)
    return state
  if steps:
    raise NoUsableCheckpointError(
      f"none of the checkpoints {steps} in {manager.directory} could be restored (see the "
      "warnings above); fix the config or move them away to start afresh"
    )
  return None
