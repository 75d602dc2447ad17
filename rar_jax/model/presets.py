"""Model sizes: the paper's RAR-B/L/XL/XXL presets and the resolved model config.

A config's `model` group names a `variant` (or none) and may set any of width, depth, heads
and mlp_dim explicitly; explicit values win over the preset. `resolve` turns that group into
the frozen `ModelConfig` every module takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rar_jax.model import numerics

# variant -> (width, depth, heads, mlp_dim); paper Tab. 1 and README_RAR.md.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
  "B": (768, 24, 16, 3072),
  "L": (1024, 24, 16, 4096),
  "XL": (1280, 32, 16, 5120),
  "XXL": (1408, 40, 16, 6144),
}

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16")

# The official tables allocate more rows than any code path reads; we keep only the read rows
# and pad back to these sizes on export (rar.py: image_seq_len + 1024 and image_seq_len + 100).
OFFICIAL_POS_EXTRA_ROWS = 1024
OFFICIAL_TIMESTEP_EXTRA_ROWS = 100


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything that fixes the generator's parameter shapes and its computation."""

  width: int
  depth: int
  heads: int
  mlp_dim: int
  seq_len: int = 256
  codebook_size: int = 1024
  num_classes: int = 1000
  dropout: float = 0.1
  attn_dropout: float = 0.1
  dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  # Query blocks of the causal training attention (`rar_jax.model.attention`): 4 skips ~3/8 of the
  # [T, T] logit work; 1 computes the full square. The result is the same either way.
  attention_blocks: int = 4
  # Numeric paths (`rar_jax.model.numerics`): "auto" = the backend's default there.
  attention_impl: str = "auto"
  layer_norm_impl: str = "auto"
  gelu_dropout_impl: str = "auto"
  linear_impl: str = "auto"
  split_impl: str = "auto"
  decode_attention_impl: str = "auto"

  @property
  def head_dim(self) -> int:
    return self.width // self.heads

  @property
  def class_offset(self) -> int:
    """Token id of class 0: codes, then the (unused) mask id, then the classes."""
    return self.codebook_size + 1

  @property
  def null_class(self) -> int:
    """Class index of the guidance null class (token id codebook + 1 + num_classes)."""
    return self.num_classes

  @property
  def vocab_size(self) -> int:
    """Rows of the input embedding table: codes, mask, classes, null class."""
    return self.codebook_size + 1 + self.num_classes + 1

  @property
  def num_positions(self) -> int:
    """Sequence length the blocks see: [cls, class, seq_len tokens]."""
    return self.seq_len + 2

  def validate(self) -> ModelConfig:
    """Raises ValueError naming the offending key when the config cannot build a model."""
    positive = ("width", "depth", "heads", "mlp_dim", "seq_len", "codebook_size", "num_classes")
    for key in (*positive, "attention_blocks"):
      value = getattr(self, key)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
    if self.width % self.heads:
      raise ValueError(f"model.width={self.width} is not divisible by model.heads={self.heads}")
    for key in ("dropout", "attn_dropout"):
      value = getattr(self, key)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"model.{key} must be in [0, 1), got {value!r}")
    if self.dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
        f"model.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"
      )
    numerics.validate(self)
    if self.codebook_size > 65535:
      raise ValueError(f"model.codebook_size={self.codebook_size} does not fit uint16 records")
    return self


_SIZE_KEYS = ("width", "depth", "heads", "mlp_dim")


def resolve(model_cfg: Mapping[str, Any]) -> ModelConfig:
  """Builds the ModelConfig from a config's `model` group (a ConfigDict or a dict).

  Args:
    model_cfg: keys `variant` (one of VARIANTS, or empty/None) and optionally width, depth,
      heads, mlp_dim, plus any other ModelConfig field. Explicit sizes override the variant.

  Returns:
    The validated ModelConfig.

  Raises:
    ValueError: unknown variant, unknown key, or a size missing without a variant.
  """
  values = dict(model_cfg)
  variant = values.pop("variant", None) or None
  sizes: dict[str, Any] = {}
  if variant is not None:
    if variant not in VARIANTS:
      raise ValueError(f"model.variant={variant!r} is not one of {sorted(VARIANTS)}")
    sizes = dict(zip(_SIZE_KEYS, VARIANTS[variant], strict=True))
  for key in _SIZE_KEYS:
    if values.get(key) is not None:
      sizes[key] = values[key]
    values.pop(key, None)
  missing = [k for k in _SIZE_KEYS if k not in sizes]
  if missing:
    raise ValueError(f"model.{missing[0]} must be set when model.variant is not given")
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"unknown model config key model.{unknown[0]}")
  return ModelConfig(**sizes, **values).validate()
