"""PyTorch state dicts <-> our parameter trees, by a declared table.

Each PyTorch import (the RAR weights in `rar_jax.model.convert`, the MaskGIT-VQGAN in
`rar_jax.tokenizers.vqgan`, the FID Inception in `rar_jax.evaluation.inception`) declares a
`Table`: torch key -> `Tensor(torch shape, path in our tree, to_ours, to_torch)`. The functions
here apply a table, the same way for all three:

  from_torch(state, table, what)  check every key and shape, then each value (a float, all
                                  finite), transform it and place it at its path (float32 numpy)
  load(source, table, what)       the same from a `.bin`/`.pt`/`.npz` path or a name -> array map
  to_torch(tree, table)           back to a state dict (float32, C-contiguous)
  names(table)                    our tree with the torch key at each leaf
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from rar_jax.infra import torch_io

Transform = Callable[[np.ndarray], np.ndarray]
Tree = dict[str, Any]


def identity(a: np.ndarray) -> np.ndarray:
  return a


def conv_to_ours(a: np.ndarray) -> np.ndarray:
  """torch conv weight (out, in, kh, kw) -> Flax kernel (kh, kw, in, out)."""
  return a.transpose(2, 3, 1, 0)


def conv_to_torch(a: np.ndarray) -> np.ndarray:
  """Flax kernel (kh, kw, in, out) -> torch conv weight (out, in, kh, kw)."""
  return a.transpose(3, 2, 0, 1)


def transpose(a: np.ndarray) -> np.ndarray:
  """torch Linear weight (out, in) <-> Dense kernel (in, out)."""
  return a.T


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One torch tensor of a table: its torch shape, where it lives in our tree, and the
  transforms between the two layouts (each the other's inverse)."""

  shape: tuple[int, ...]
  path: tuple[str, ...]
  to_ours: Transform = identity
  to_torch: Transform = identity


Table = Mapping[str, Tensor]


def conv(shape: tuple[int, ...], path: tuple[str, ...]) -> Tensor:
  """A torch conv weight of `shape` (out, in, kh, kw) stored as a Flax kernel at `path`."""
  return Tensor(shape, path, conv_to_ours, conv_to_torch)


def shapes(table: Table) -> dict[str, tuple[int, ...]]:
  """torch key -> torch shape, every key of the table."""
  return {key: tensor.shape for key, tensor in table.items()}


def set_path(tree: Tree, path: tuple[str, ...], value: Any) -> None:
  """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def get_path(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for name in path:
    tree = tree[name]
  return tree


def check_float(what: str, key: str, value: Any) -> np.ndarray:
  """The tensor `key` of `what` as float32, refusing non-float dtypes and NaN or inf values.

  Raises:
    ValueError: naming `what`, the key and its dtype, or how many of its values are not finite.
  """
  array = np.asarray(value)
  if array.dtype.kind != "f" and array.dtype != ml_dtypes.bfloat16:
    raise ValueError(f"{what} key {key!r} has dtype {array.dtype}, not a float")
  array = array.astype(np.float32)
  bad = array.size - int(np.count_nonzero(np.isfinite(array)))
  if bad:
    raise ValueError(f"{what} key {key!r} has {bad} of {array.size} values NaN or infinite")
  return array


def from_torch(
  state: Mapping[str, Any],
  table: Table,
  what: str,
  optional: Callable[[str], bool] = lambda key: False,
) -> Tree:
  """State dict (torch key -> array-like) -> our tree of float32 numpy arrays.

  Keys for which `optional(key)` holds may be present and are ignored.

  Raises:
    ValueError: naming `what` and the key: a missing, unexpected or mis-shaped key (with both
      shapes), checked before any conversion; a non-float tensor; NaN or infinite values.
  """
  torch_io.check_state_dict(state, shapes(table), what, optional)
  tree: Tree = {}
  for key, tensor in table.items():
    set_path(tree, tensor.path, tensor.to_ours(check_float(what, key, state[key])))
  return tree


def load(
  source: str | os.PathLike | Mapping[str, Any],
  table: Table,
  what: str,
  optional: Callable[[str], bool] = lambda key: False,
) -> Tree:
  """`from_torch` of a name -> array mapping, or of the file at a path (`.bin`/`.pt` read by
  the tensor-only reader `torch_io.load_state_dict`, which runs no pickled code; `.npz`)."""
  state = source if isinstance(source, Mapping) else torch_io.load_state_dict(source)
  return from_torch(state, table, what, optional)


def to_torch(tree: Mapping[str, Any], table: Table) -> dict[str, np.ndarray]:
  """Our tree -> state dict of float32, C-contiguous numpy arrays, one per table key."""
  return {
    key: np.ascontiguousarray(tensor.to_torch(np.asarray(get_path(tree, tensor.path), np.float32)))
    for key, tensor in table.items()
  }


def names(table: Table) -> Tree:
  """A tree shaped like ours whose leaves are the torch keys."""
  tree: Tree = {}
  for key, tensor in table.items():
    set_path(tree, tensor.path, key)
  return tree
