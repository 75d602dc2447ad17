"""Which implementation each numeric path of the generator uses, per backend.

Every hand-written path has the library path beside it, chosen by a `model.*` key; "auto" (the
default) picks the backend's default from `DEFAULTS`, the one table of per-backend choices:

  attention_impl    custom: hand-written backward + causal query blocks (`model.attention`);
                    autodiff: plain autodiff of the same forward; xla: `jax.nn.dot_product_
                    attention` where no attention dropout applies (sampling, eval), else autodiff;
                    pallas: the fused Pallas TPU kernels with in-kernel dropout for causal
                    self-attention (`model.kernels.flash_attention`; Pallas' interpret mode off
                    a TPU, for tests), custom with a KV cache; cudnn: `jax.nn.dot_product_
                    attention(implementation="cudnn")` (GPU, bf16) where no attention dropout
                    applies, else custom
  layer_norm_impl   custom: hand-written backward (`model.normalization`);
                    flax: `flax.linen.LayerNorm(use_fast_variance=False)`
  gelu_dropout_impl custom: GELU + dropout with a hand-written backward (`model.dropout`);
                    autodiff: the same forward under plain autodiff
  linear_impl       flat: one [N, in] x [in, out] matmul where the sharding allows;
                    dot_general: the N-d contraction (`jnp.tensordot`, as DenseGeneral)

All settings compute the same function (tests/model/test_model.py checks the golden logits under
each). The evidence for each default is in docs/measurements/performance.md: CPU from
`rar_jax.tools.bench` runs, TPU from the TPU compiler (`bench --compile_only`), GPU pending a
measurement (`launch/gpu_bench.sh`), so the GPU keeps the library paths.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

CHOICES: dict[str, tuple[str, ...]] = {
  "attention_impl": ("custom", "autodiff", "xla", "pallas", "cudnn"),
  "layer_norm_impl": ("custom", "flax"),
  "gelu_dropout_impl": ("custom", "autodiff"),
  "linear_impl": ("flat", "dot_general"),
}
AUTO = "auto"

LIBRARY = {
  "attention_impl": "xla",
  "layer_norm_impl": "flax",
  "gelu_dropout_impl": "autodiff",
  "linear_impl": "dot_general",
}
DEFAULTS: dict[str, dict[str, str]] = {
  # Measured fastest on the 2-core CPU (docs/measurements/performance.md, CPU table).
  "cpu": {
    "attention_impl": "custom",
    "layer_norm_impl": "custom",
    "gelu_dropout_impl": "custom",
    "linear_impl": "flat",
  },
  # From the TPU compiler's per-layer costs (docs/measurements/performance.md, TPU table): the
  # fused Pallas attention (issue 25) takes 0.90x (B) and 0.93x (XL) of the hand-written one's
  # step estimate, kernels counted, with less memory (RAR-XXL full depth, scanned: 88.8 GiB per
  # chip vs 93.6); the hand-written one (with a KV cache, sampling) beat the library's.
  "tpu": {**LIBRARY, "attention_impl": "pallas"},
  # Library paths until a GPU measurement says otherwise.
  "gpu": dict(LIBRARY),
}


def validate(cfg: Any) -> None:
  """Raises ValueError naming the model.* key whose value is not a known implementation."""
  for key, choices in CHOICES.items():
    value = getattr(cfg, key)
    if value != AUTO and value not in choices:
      raise ValueError(f"model.{key} must be one of {(AUTO, *choices)}, got {value!r}")


def impl(cfg: Any, key: str) -> str:
  """The implementation `key` runs: the config's value, or for "auto" the default backend's."""
  value = getattr(cfg, key)
  if value != AUTO:
    return value
  return DEFAULTS.get(jax.default_backend(), DEFAULTS["gpu"])[key]


def for_platform(cfg: Any, platform: str) -> Any:
  """`cfg` with every "auto" switch fixed to `platform`'s default ("cpu", "tpu", "gpu"/"cuda"):
  for programs compiled for another backend than the default one (the TPU compiler on a CPU)."""
  defaults = DEFAULTS.get(platform, DEFAULTS["gpu"])
  fixed = {k: defaults[k] for k in CHOICES if getattr(cfg, k) == AUTO}
  return dataclasses.replace(cfg, **fixed) if fixed else cfg
