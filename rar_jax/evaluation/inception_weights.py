"""Weight import of the FID Inception-v3 (`rar_jax.evaluation.inception`): the pytorch-fid
state-dict layout, every key and shape checked, converted to the Flax variables {"params",
"batch_stats"}.
  variables = inception_weights.load_weights("pt_inception-2015-12-05-6726825d.pth")
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from rar_jax import torch_io

Variables = dict[str, Any]  # {"params": ..., "batch_stats": ...}
Shapes = dict[str, tuple[int, ...]]  # torch state-dict key -> shape

NUM_CLASSES = 1008  # the graph's classifier rows
POOL_DIM = 2048  # pool_3 features


def _conv_bn(cin: int, cout: int, kh: int, kw: int) -> Shapes:
  return {
    "conv.weight": (cout, cin, kh, kw),
    "bn.weight": (cout,),
    "bn.bias": (cout,),
    "bn.running_mean": (cout,),
    "bn.running_var": (cout,),
  }


def _block(prefix: str, convs: Sequence[tuple[str, int, int, int, int]]) -> Shapes:
  """{f"{prefix}.{name}.{leaf}": shape} for (name, cin, cout, kh, kw) conv+bn layers."""
  out = {}
  for name, cin, cout, kh, kw in convs:
    for leaf, shape in _conv_bn(cin, cout, kh, kw).items():
      out[f"{prefix}.{name}.{leaf}" if prefix else f"{name}.{leaf}"] = shape
  return out


def _a(prefix: str, cin: int, pool_features: int) -> Shapes:
  return _block(
    prefix,
    [
      ("branch1x1", cin, 64, 1, 1),
      ("branch5x5_1", cin, 48, 1, 1),
      ("branch5x5_2", 48, 64, 5, 5),
      ("branch3x3dbl_1", cin, 64, 1, 1),
      ("branch3x3dbl_2", 64, 96, 3, 3),
      ("branch3x3dbl_3", 96, 96, 3, 3),
      ("branch_pool", cin, pool_features, 1, 1),
    ],
  )


def _c(prefix: str, c7: int) -> Shapes:
  return _block(
    prefix,
    [
      ("branch1x1", 768, 192, 1, 1),
      ("branch7x7_1", 768, c7, 1, 1),
      ("branch7x7_2", c7, c7, 1, 7),
      ("branch7x7_3", c7, 192, 7, 1),
      ("branch7x7dbl_1", 768, c7, 1, 1),
      ("branch7x7dbl_2", c7, c7, 7, 1),
      ("branch7x7dbl_3", c7, c7, 1, 7),
      ("branch7x7dbl_4", c7, c7, 7, 1),
      ("branch7x7dbl_5", c7, 192, 1, 7),
      ("branch_pool", 768, 192, 1, 1),
    ],
  )


def _e(prefix: str, cin: int) -> Shapes:
  return _block(
    prefix,
    [
      ("branch1x1", cin, 320, 1, 1),
      ("branch3x3_1", cin, 384, 1, 1),
      ("branch3x3_2a", 384, 384, 1, 3),
      ("branch3x3_2b", 384, 384, 3, 1),
      ("branch3x3dbl_1", cin, 448, 1, 1),
      ("branch3x3dbl_2", 448, 384, 3, 3),
      ("branch3x3dbl_3a", 384, 384, 1, 3),
      ("branch3x3dbl_3b", 384, 384, 3, 1),
      ("branch_pool", cin, 192, 1, 1),
    ],
  )


def official_shapes() -> Shapes:
  """Every key of the pytorch-fid FID Inception state dict with its torch shape (conv weights
  (out, in, kh, kw)). BatchNorm `num_batches_tracked` counters are optional and ignored."""
  s = _block(
    "",
    [
      ("Conv2d_1a_3x3", 3, 32, 3, 3),
      ("Conv2d_2a_3x3", 32, 32, 3, 3),
      ("Conv2d_2b_3x3", 32, 64, 3, 3),
      ("Conv2d_3b_1x1", 64, 80, 1, 1),
      ("Conv2d_4a_3x3", 80, 192, 3, 3),
    ],
  )
  s |= _a("Mixed_5b", 192, 32) | _a("Mixed_5c", 256, 64) | _a("Mixed_5d", 288, 64)
  s |= _block(
    "Mixed_6a",
    [
      ("branch3x3", 288, 384, 3, 3),
      ("branch3x3dbl_1", 288, 64, 1, 1),
      ("branch3x3dbl_2", 64, 96, 3, 3),
      ("branch3x3dbl_3", 96, 96, 3, 3),
    ],
  )
  s |= _c("Mixed_6b", 128) | _c("Mixed_6c", 160) | _c("Mixed_6d", 160) | _c("Mixed_6e", 192)
  s |= _block(
    "Mixed_7a",
    [
      ("branch3x3_1", 768, 192, 1, 1),
      ("branch3x3_2", 192, 320, 3, 3),
      ("branch7x7x3_1", 768, 192, 1, 1),
      ("branch7x7x3_2", 192, 192, 1, 7),
      ("branch7x7x3_3", 192, 192, 7, 1),
      ("branch7x7x3_4", 192, 192, 3, 3),
    ],
  )
  s |= _e("Mixed_7b", 1280) | _e("Mixed_7c", 2048)
  s["fc.weight"] = (NUM_CLASSES, POOL_DIM)
  s["fc.bias"] = (NUM_CLASSES,)
  return s


_BN_LEAVES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


def _is_optional(key: str) -> bool:
  """BatchNorm step counters (absent from the TF-converted file, saved by newer torch)."""
  suffix = "num_batches_tracked"
  return key.endswith(f".bn.{suffix}") and f"{key[: -len(suffix)]}weight" in _OFFICIAL


def _assign(tree: dict, path: Sequence[str], value: np.ndarray) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = jnp.asarray(value)


def convert_state_dict(state_dict: Mapping[str, Any]) -> Variables:
  """pytorch-fid state dict -> Flax variables {"params", "batch_stats"} of `InceptionV3`,
  float32. Conv weights (out, in, kh, kw) become (kh, kw, in, out); `fc.weight` is transposed.

  Raises:
    ValueError: a missing, unexpected or mis-shaped key, naming the key and both shapes.
  """
  torch_io.check_state_dict(state_dict, _OFFICIAL, "Inception state dict", _is_optional)
  variables: Variables = {"params": {}, "batch_stats": {}}
  for key in _OFFICIAL:
    arr = np.asarray(state_dict[key], dtype=np.float32)
    *mods, layer, leaf = key.split(".")
    if layer == "fc":
      _assign(variables["params"], ("fc", leaf if leaf == "bias" else "kernel"), arr.T)
    elif layer == "conv":
      _assign(variables["params"], (*mods, "conv", "kernel"), arr.transpose(2, 3, 1, 0))
    else:  # bn
      collection, name = _BN_LEAVES[leaf]
      _assign(variables[collection], (*mods, "bn", name), arr)
  return variables


def load_weights(source: str | os.PathLike | Mapping[str, Any]) -> Variables:
  """Flax variables from `pt_inception-2015-12-05-6726825d.pth` (or an `.npz` of the same keys,
  or a name -> array mapping). Nothing is downloaded: see the module docstring for the URL.

  Raises:
    FileNotFoundError: no file at `source`.
    ValueError: unreadable file, or a missing, unexpected or mis-shaped key.
  """
  if isinstance(source, Mapping):
    return convert_state_dict(source)
  return convert_state_dict(torch_io.load_state_dict(source))


_OFFICIAL = official_shapes()
