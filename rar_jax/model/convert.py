"""Official PyTorch RAR state dicts <-> rar_jax parameters, both ways.

The official key names and shapes are in docs/reference/official_code.md (checkpoints). Every
size comes from the ModelConfig. Rows the official position tables allocate but no code path reads
(rows >= L + 2) are dropped on import and zero-filled on export; everything else round-trips
exactly. `table(cfg)` declares every official tensor; `rar_jax.infra.torch_convert` applies it
(as for the tokenizer's and the Inception's weights).

Public calls:
  load_official(path_or_mapping, cfg) -> params      (a .bin/.pt/.npz path, or name -> array)
  from_official(state_dict, cfg) -> params
  to_official(params, cfg) -> state_dict              (loads strictly into the official RAR)
  save_official(params, cfg, path)
  official_names(cfg) -> tree of official tensor names over our parameters
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from rar_jax.infra import torch_convert, torch_io
from rar_jax.infra.torch_convert import Tensor
from rar_jax.model import presets
from rar_jax.model.presets import ModelConfig

Params = dict[str, Any]
WHAT = "official RAR state dict"


def _linear(path: tuple[str, ...], d_in: int, out_shape: tuple[int, ...]) -> list[Tensor]:
  """torch Linear(d_in, prod(out_shape)) -> DenseGeneral kernel [d_in, *out_shape], bias."""
  n_out = int(np.prod(out_shape))
  return [
    Tensor(
      (n_out, d_in),
      (*path, "kernel"),
      lambda a: a.T.reshape(d_in, *out_shape),
      lambda a: a.reshape(d_in, n_out).T,
    ),
    Tensor((n_out,), (*path, "bias"), lambda a: a.reshape(out_shape), lambda a: a.reshape(n_out)),
  ]


def _layer_norm(path: tuple[str, ...], dim: int) -> list[Tensor]:
  return [Tensor((dim,), (*path, "scale")), Tensor((dim,), (*path, "bias"))]


def _position_table(rows_official: int, rows_ours: int, d: int, path: tuple[str, ...]) -> Tensor:
  """(1, rows_official, D) parameter of which we keep the first rows_ours rows."""

  def to_torch(a: np.ndarray) -> np.ndarray:
    out = np.zeros((1, rows_official, d), a.dtype)
    out[0, :rows_ours] = a
    return out

  return Tensor((1, rows_official, d), path, lambda a: a[0, :rows_ours], to_torch)


def _proj(d: int, h: int, k: int) -> list[Tensor]:
  """Attention output Linear(D, D) -> kernel [H, K, D] (input features are head-major)."""
  return [
    Tensor(
      (d, d),
      ("attn", "proj", "kernel"),
      lambda a: a.T.reshape(h, k, d),
      lambda a: a.reshape(d, d).T,
    ),
    Tensor((d,), ("attn", "proj", "bias")),
  ]


def _named(pairs: dict[str, list[Tensor]]) -> dict[str, Tensor]:
  """{"prefix": [weight-or-scale, bias]} -> {"prefix.weight": ..., "prefix.bias": ...}."""
  out = {}
  for prefix, (first, bias) in pairs.items():
    out[f"{prefix}.weight"] = first
    out[f"{prefix}.bias"] = bias
  return out


def _block(cfg: ModelConfig) -> dict[str, Tensor]:
  """One block's tensors, keyed by the name after `blocks.N.`; paths relative to the block."""
  d, h, k, m = cfg.width, cfg.heads, cfg.head_dim, cfg.mlp_dim
  return _named(
    {
      "norm1": _layer_norm(("norm1",), d),
      "norm2": _layer_norm(("norm2",), d),
      "attn.qkv": _linear(("attn", "qkv"), d, (3, h, k)),
      "attn.q_norm": _layer_norm(("attn", "q_norm"), k),
      "attn.k_norm": _layer_norm(("attn", "k_norm"), k),
      "attn.proj": _proj(d, h, k),
      "mlp.fc1": _linear(("mlp", "fc1"), d, (m,)),
      "mlp.fc2": _linear(("mlp", "fc2"), m, (d,)),
      "adaLN_modulation.1": _linear(("adaln", "linear"), d, (6, d)),
    }
  )


def table(cfg: ModelConfig) -> dict[str, Tensor]:
  """Every official tensor: key -> torch shape, path in our tree (blocks unrolled as
  `blocks/layers_N`; scanned parameters are stacked after) and transforms."""
  d, n = cfg.width, cfg.num_positions
  pos_rows = cfg.seq_len + presets.OFFICIAL_POS_EXTRA_ROWS
  step_rows = cfg.seq_len + presets.OFFICIAL_TIMESTEP_EXTRA_ROWS
  out = {
    "cls_token": Tensor(
      (1, 1, d), ("cls_token",), lambda a: a.reshape(d), lambda a: a.reshape(1, 1, d)
    ),
    "pos_embed": _position_table(pos_rows, n, d, ("pos_embed",)),
    "target_aware_pos_embed": _position_table(pos_rows, n, d, ("target_aware_pos_embed",)),
    "timesteps_embeddings": _position_table(step_rows, n, d, ("timesteps_embeddings",)),
    "embeddings.weight": Tensor((cfg.vocab_size, d), ("embeddings",)),
  }
  out |= _named(
    {
      "adaln_before_head.adaLN_modulation.1": _linear(("final", "adaln", "linear"), d, (2, d)),
      "lm_head": _linear(("lm_head",), d, (cfg.codebook_size,)),
    }
  )
  block = _block(cfg)
  for i in range(cfg.depth):
    for key, tensor in block.items():
      path = ("blocks", f"layers_{i}", *tensor.path)
      out[f"blocks.{i}.{key}"] = Tensor(tensor.shape, path, tensor.to_ours, tensor.to_torch)
  return out


def official_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every key of the official state dict for this config, with its shape."""
  return torch_convert.shapes(table(cfg))


def _stacked(params: Params, cfg: ModelConfig) -> Params:
  """Unrolled blocks `layers_N` -> the scanned `layers` (leading axis N), when cfg scans."""
  if not cfg.scan_layers:
    return params
  layers = [params["blocks"][f"layers_{i}"] for i in range(cfg.depth)]
  return {**params, "blocks": {"layers": jax.tree.map(lambda *a: np.stack(a), *layers)}}


def _unrolled(params: Params, cfg: ModelConfig) -> Params:
  """The inverse of `_stacked`."""
  if not cfg.scan_layers:
    return params
  stacked = params["blocks"]["layers"]
  blocks = {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(cfg.depth)}
  return {**params, "blocks": blocks}


def official_names(cfg: ModelConfig) -> Params:
  """Tree shaped like our parameters whose leaves are the official state-dict names (for
  stacked, scanned layers: layer 0's name, `blocks.0.<key>`)."""
  names = torch_convert.names(table(cfg))
  if cfg.scan_layers:
    names["blocks"] = {"layers": names["blocks"]["layers_0"]}
  return names


def from_official(state: Mapping[str, Any], cfg: ModelConfig) -> Params:
  """Official state dict (name -> array-like) -> parameter tree of float32 numpy arrays.

  Raises:
    ValueError: a missing, unexpected or mis-shaped key, naming the key and both shapes; an
      integer (or other non-float) tensor, or NaN / infinite values, naming the key.
  """
  return _stacked(torch_convert.from_torch(state, table(cfg), WHAT), cfg)


def to_official(params: Params, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """Parameter tree -> official state dict of float32 numpy arrays (strict-loadable)."""
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  return torch_convert.to_torch(_unrolled(params, cfg), table(cfg))


def load_official(source: str | os.PathLike | Mapping[str, Any], cfg: ModelConfig) -> Params:
  """Loads official weights: a path (`rar_{b,l,xl,xxl}.bin`, .pt, .npz) or a name -> array map.

  A `.bin` is read by a tensor-only reader that never executes pickled code; torch is not needed.
  """
  return _stacked(torch_convert.load(source, table(cfg), WHAT), cfg)


def save_official(params: Params, cfg: ModelConfig, path: str | os.PathLike, **kwargs) -> None:
  """Writes an official-format state dict (.bin/.pt via torch, or .npz)."""
  torch_io.save_state_dict(to_official(params, cfg), path, **kwargs)
