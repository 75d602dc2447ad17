"""Builds the image tokenizer a config names: the MaskGIT-VQGAN (weights from a user-supplied
file; nothing downloads) or the pixel quantizer of the embedded digits default. Both expose
name, seq_len, codebook_size, image_size, encode(images) and decode(codes)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.tokenizers import vqgan
from rar_jax.tokenizers.pixel import PixelTokenizer

KINDS = ("vqgan", "pixel")


def default_config(kind: str = "vqgan") -> ml_collections.ConfigDict:
  """The `tokenizer` config group: kind, weights (VQGAN file), levels (pixel), vqgan sizes."""
  c = ml_collections.ConfigDict()
  c.kind = kind
  c.weights = ml_collections.config_dict.placeholder(str)
  c.levels = 17
  c.vqgan = ml_collections.ConfigDict(dataclasses.asdict(vqgan.VQGANConfig()))
  return c


def build(tok_cfg: Mapping[str, Any], image_size: int, mesh: Mesh | None = None) -> Any:
  """The tokenizer of a `tokenizer` config group, at image_size, on this host's devices.

  Raises:
    ValueError: unknown kind. FileNotFoundError: missing VQGAN weights (naming the key).
  """
  kind = tok_cfg["kind"]
  if kind == "pixel":
    return PixelTokenizer(levels=tok_cfg["levels"], image_size=image_size)
  if kind != "vqgan":
    raise ValueError(f"unknown tokenizer.kind {kind!r}; use one of {KINDS}")
  weights = tok_cfg["weights"]
  if not weights or not os.path.isfile(weights):
    raise FileNotFoundError(
      f"VQGAN weights not found: tokenizer.weights={weights!r} (the official file is "
      "maskgit-vqgan-imagenet-f16-256.bin; nothing is downloaded)"
    )
  sizes = dict(tok_cfg["vqgan"])
  cfg = vqgan.VQGANConfig(
    **{**sizes, "channel_mult": tuple(sizes["channel_mult"]), "resolution": image_size}
  )
  mesh = mesh or sharding.make_mesh(devices=jax.local_devices())
  return vqgan.Tokenizer(cfg, vqgan.load_official(weights, cfg), mesh=mesh)
