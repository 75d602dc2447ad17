"""Official PyTorch RAR state dicts <-> rar_jax parameters, both ways.

The official key names and shapes are in docs/reference/official_code.md (checkpoints). Every
size comes from the ModelConfig. Rows the official position tables allocate but no code path reads
(rows >= L + 2) are dropped on import and zero-filled on export; everything else round-trips
exactly.

Public calls:
  load_official(path_or_mapping, cfg) -> params      (a .bin/.pt/.npz path, or name -> array)
  from_official(state_dict, cfg) -> params
  to_official(params, cfg) -> state_dict              (loads strictly into the official RAR)
  save_official(params, cfg, path)
  official_names(cfg) -> tree of official tensor names over our parameters
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np

from rar_jax.infra import torch_io
from rar_jax.model import presets
from rar_jax.model.presets import ModelConfig

Params = dict[str, Any]
Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Rule:
  """One official tensor: its shape, where it lives in our tree and how to convert."""

  official_shape: tuple[int, ...]
  path: tuple[str, ...]
  to_ours: Transform
  to_official: Transform


def _linear(path: tuple[str, ...], d_in: int, out_shape: tuple[int, ...]) -> list[_Rule]:
  """torch Linear(d_in, prod(out_shape)) -> DenseGeneral kernel [d_in, *out_shape], bias."""
  n_out = int(np.prod(out_shape))
  return [
    _Rule(
      (n_out, d_in),
      (*path, "kernel"),
      lambda a: a.T.reshape(d_in, *out_shape),
      lambda a: a.reshape(d_in, n_out).T,
    ),
    _Rule((n_out,), (*path, "bias"), lambda a: a.reshape(out_shape), lambda a: a.reshape(n_out)),
  ]


def _identity(shape: tuple[int, ...], path: tuple[str, ...]) -> _Rule:
  return _Rule(shape, path, lambda a: a, lambda a: a)


def _layer_norm(path: tuple[str, ...], dim: int) -> list[_Rule]:
  return [_identity((dim,), (*path, "scale")), _identity((dim,), (*path, "bias"))]


def _table(rows_official: int, rows_ours: int, d: int, path: tuple[str, ...]) -> _Rule:
  """(1, rows_official, D) parameter of which we keep the first rows_ours rows."""

  def to_official(a: np.ndarray) -> np.ndarray:
    out = np.zeros((1, rows_official, d), a.dtype)
    out[0, :rows_ours] = a
    return out

  return _Rule((1, rows_official, d), path, lambda a: a[0, :rows_ours], to_official)


def _block_rules(cfg: ModelConfig) -> dict[str, _Rule]:
  """Rules for one block, keyed by the name after `blocks.N.`; paths relative to the block."""
  d, h, k, m = cfg.width, cfg.heads, cfg.head_dim, cfg.mlp_dim
  pairs = {
    "norm1": _layer_norm(("norm1",), d),
    "norm2": _layer_norm(("norm2",), d),
    "attn.qkv": _linear(("attn", "qkv"), d, (3, h, k)),
    "attn.q_norm": _layer_norm(("attn", "q_norm"), k),
    "attn.k_norm": _layer_norm(("attn", "k_norm"), k),
    "attn.proj": _proj_rules(d, h, k),
    "mlp.fc1": _linear(("mlp", "fc1"), d, (m,)),
    "mlp.fc2": _linear(("mlp", "fc2"), m, (d,)),
    "adaLN_modulation.1": _linear(("adaln", "linear"), d, (6, d)),
  }
  return _named(pairs)


def _proj_rules(d: int, h: int, k: int) -> list[_Rule]:
  """Attention output Linear(D, D) -> kernel [H, K, D] (input features are head-major)."""
  return [
    _Rule(
      (d, d),
      ("attn", "proj", "kernel"),
      lambda a: a.T.reshape(h, k, d),
      lambda a: a.reshape(d, d).T,
    ),
    _identity((d,), ("attn", "proj", "bias")),
  ]


def _named(pairs: dict[str, list[_Rule]]) -> dict[str, _Rule]:
  """{"prefix": [weight-or-scale rule, bias rule]} -> {"prefix.weight": ..., "prefix.bias": ...}."""
  out = {}
  for prefix, (first, bias) in pairs.items():
    out[f"{prefix}.weight"] = first
    out[f"{prefix}.bias"] = bias
  return out


def _top_rules(cfg: ModelConfig) -> dict[str, _Rule]:
  d, n = cfg.width, cfg.num_positions
  pos_rows = cfg.seq_len + presets.OFFICIAL_POS_EXTRA_ROWS
  step_rows = cfg.seq_len + presets.OFFICIAL_TIMESTEP_EXTRA_ROWS
  rules = {
    "cls_token": _Rule(
      (1, 1, d), ("cls_token",), lambda a: a.reshape(d), lambda a: a.reshape(1, 1, d)
    ),
    "pos_embed": _table(pos_rows, n, d, ("pos_embed",)),
    "target_aware_pos_embed": _table(pos_rows, n, d, ("target_aware_pos_embed",)),
    "timesteps_embeddings": _table(step_rows, n, d, ("timesteps_embeddings",)),
    "embeddings.weight": _identity((cfg.vocab_size, d), ("embeddings",)),
  }
  rules.update(
    _named(
      {
        "adaln_before_head.adaLN_modulation.1": _linear(("final", "adaln", "linear"), d, (2, d)),
        "lm_head": _linear(("lm_head",), d, (cfg.codebook_size,)),
      }
    )
  )
  return rules


def official_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every key of the official state dict for this config, with its shape."""
  shapes = {key: rule.official_shape for key, rule in _top_rules(cfg).items()}
  for i in range(cfg.depth):
    for key, rule in _block_rules(cfg).items():
      shapes[f"blocks.{i}.{key}"] = rule.official_shape
  return shapes


def official_names(cfg: ModelConfig) -> Params:
  """Tree shaped like our parameters whose leaves are the official state-dict names (for
  stacked, scanned layers: layer 0's name, `blocks.0.<key>`)."""
  names: Params = {}
  for key, rule in _top_rules(cfg).items():
    _set(names, rule.path, key)

  def layer(i: int) -> Params:
    out: Params = {}
    for key, rule in _block_rules(cfg).items():
      _set(out, rule.path, f"blocks.{i}.{key}")
    return out

  if cfg.scan_layers:
    names["blocks"] = {"layers": layer(0)}
  else:
    names["blocks"] = {f"layers_{i}": layer(i) for i in range(cfg.depth)}
  return names


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def check_values(key: str, value: Any) -> np.ndarray:
  """The weight `key` as float32, refusing non-float dtypes and NaN or infinite values.

  Raises:
    ValueError: naming the key and its dtype, or how many of its values are not finite.
  """
  array = np.asarray(value)
  if array.dtype.kind != "f" and array.dtype != ml_dtypes.bfloat16:
    raise ValueError(f"official RAR state dict key {key!r} has dtype {array.dtype}, not a float")
  array = array.astype(np.float32)
  bad = array.size - int(np.count_nonzero(np.isfinite(array)))
  if bad:
    raise ValueError(
      f"official RAR state dict key {key!r} has {bad} of {array.size} values NaN or infinite"
    )
  return array


def from_official(state: Mapping[str, Any], cfg: ModelConfig) -> Params:
  """Official state dict (name -> array-like) -> parameter tree of float32 numpy arrays.

  Raises:
    ValueError: a missing, unexpected or mis-shaped key, naming the key and both shapes; an
      integer (or other non-float) tensor, or NaN / infinite values, naming the key.
  """
  torch_io.check_state_dict(state, official_shapes(cfg), "official RAR state dict")
  as_f32 = lambda key: check_values(key, state[key])
  params: Params = {}
  for key, rule in _top_rules(cfg).items():
    _set(params, rule.path, rule.to_ours(as_f32(key)))
  layers = []
  for i in range(cfg.depth):
    layer: Params = {}
    for key, rule in _block_rules(cfg).items():
      _set(layer, rule.path, rule.to_ours(as_f32(f"blocks.{i}.{key}")))
    layers.append(layer)
  if cfg.scan_layers:
    params["blocks"] = {"layers": jax.tree.map(lambda *a: np.stack(a), *layers)}
  else:
    params["blocks"] = {f"layers_{i}": layer for i, layer in enumerate(layers)}
  return params


def to_official(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Parameter tree -> official state dict of float32 numpy arrays (strict-loadable)."""
  params = jax.tree.map(lambda a: np.asarray(a, dtype=np.float32), params)
  state = {key: rule.to_official(_get(params, rule.path)) for key, rule in _top_rules(cfg).items()}
  blocks = params["blocks"]
  for i in range(cfg.depth):
    layer = (
      jax.tree.map(lambda a, i=i: a[i], blocks["layers"])
      if cfg.scan_layers
      else blocks[f"layers_{i}"]
    )
    for key, rule in _block_rules(cfg).items():
      state[f"blocks.{i}.{key}"] = np.ascontiguousarray(rule.to_official(_get(layer, rule.path)))
  return state


def load_official(source: str | os.PathLike | Mapping[str, Any], cfg: ModelConfig) -> Params:
  """Loads official weights: a path (`rar_{b,l,xl,xxl}.bin`, .pt, .npz) or a name -> array map.

  A `.bin` is read by a tensor-only reader that never executes pickled code; torch is not needed.
  """
  if isinstance(source, Mapping):
    return from_official(source, cfg)
  return from_official(torch_io.load_state_dict(source), cfg)


def save_official(params: Params, cfg: ModelConfig, path: str | os.PathLike, **kwargs) -> None:
  """Writes an official-format state dict (.bin/.pt via torch, or .npz)."""
  torch_io.save_state_dict(to_official(params, cfg), path, **kwargs)
