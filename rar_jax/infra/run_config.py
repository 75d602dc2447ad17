"""Whether a run may resume a workdir with the config it was given.

A workdir's `config.json` records the config its checkpoints were made with. Before a resume
restores or compiles anything, the new config is compared with it, key by key (dotted keys,
e.g. `optim.lr`), in three classes:

- model keys (`model.*`, except the few below that only choose how the same model is computed):
  they fix the parameters a checkpoint holds, so a change is always refused;
- free keys, never compared: they only choose what is measured or logged and on which devices
  (`profile.*`, `eval.*`, `train.log_every`, `mesh.*`, `data.read_threads`);
- every other key (`optim.lr`, `train.steps`, `seed`, `data.dir`, `model.dtype`, ...): a change
  is refused unless allowed (`--allow_config_change`).

Keys on one side only (added or removed by another code version) are not compared. A workdir
without a checkpoint has nothing to resume: its config is not compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from rar_jax.infra import console
from rar_jax.infra.checkpointing import CONFIG_FILE

FREE_PREFIXES = ("profile.", "eval.", "mesh.")
FREE_KEYS = frozenset({"train.log_every", "data.read_threads"})
# model.* keys that choose how the same parameters are computed: allowed with the flag.
MODEL_EXECUTION_KEYS = frozenset(
  {
    "model.dtype",
    "model.remat_policy",
    "model.attention_blocks",
    "model.attention_impl",
    "model.layer_norm_impl",
    "model.gelu_dropout_impl",
    "model.linear_impl",
    "model.split_impl",
    "model.decode_attention_impl",
  }
)


class ConfigChangeError(ValueError):
  """A resume whose config differs from the one the checkpoints were made with."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values are leaves."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def is_free(key: str) -> bool:
  """Whether a key may change on resume without being compared."""
  return key in FREE_KEYS or key.startswith(FREE_PREFIXES)


def is_model(key: str) -> bool:
  """Whether a key fixes the checkpointed parameters (a change is never allowed)."""
  return key.startswith("model.") and key not in MODEL_EXECUTION_KEYS


def differences(recorded: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """(key, recorded value, new value) for each compared key that differs, in `new`'s order.

  Both configs are JSON-like trees; free keys and keys present on one side only are skipped.
  """
  old_flat, new_flat = flatten(recorded), flatten(new)
  return [
    (key, old_flat[key], value)
    for key, value in new_flat.items()
    if key in old_flat and not is_free(key) and old_flat[key] != value
  ]


def has_checkpoint(workdir: str) -> bool:
  """Whether <workdir>/checkpoints holds a step directory (a resume, not a fresh start)."""
  directory = epath.Path(workdir) / "checkpoints"
  return directory.exists() and any(p.name.isdigit() for p in directory.iterdir())


def check(workdir: str, config: ml_collections.ConfigDict, allow_changes: bool = False) -> None:
  """Refuses to resume workdir with a config its checkpoints were not made with.

  Args:
    workdir: the training workdir (its config.json is the recorded config).
    config: the config of the run about to start.
    allow_changes: accept changed non-model keys (--allow_config_change); they are listed.

  Raises:
    ConfigChangeError: a model key differs, or another key and not allow_changes; the one-line
      message names the first such key and both values.
  """
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists() or not has_checkpoint(workdir):
    return
  try:
    recorded = json.loads(path.read_text())
  except ValueError as err:
    raise ConfigChangeError(f"{path} is not valid JSON ({err}): cannot check the resume") from None
  diffs = differences(recorded, json.loads(config.to_json()))
  model = [d for d in diffs if is_model(d[0])]
  if model:
    key, old, new = model[0]
    raise ConfigChangeError(
      f"{workdir} holds checkpoints of another model: {key} is {json.dumps(old)} in {path} but "
      f"{json.dumps(new)} now; model keys cannot change on resume (use another workdir)"
    )
  if diffs and not allow_changes:
    key, old, new = diffs[0]
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    raise ConfigChangeError(
      f"resuming {workdir} with another config: {key} is {json.dumps(old)} in {path} but "
      f"{json.dumps(new)} now{more}; pass --allow_config_change to resume with it"
    )
  for key, old, new in diffs:
    console.info("Resuming with a changed %s: %s -> %s", key, json.dumps(old), json.dumps(new))
