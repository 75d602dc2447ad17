"""Which implementation each numeric path of the generator uses, per backend.

Every hand-written path has the library path beside it, chosen by a `model.*` key; "auto" (the
default) picks the backend's default from `DEFAULTS`, the one table of per-backend choices:

  attention_impl    custom: hand-written backward + causal query blocks (`model.attention`);
                    autodiff: plain autodiff of the same forward; xla: `jax.nn.dot_product_
                    attention` where no attention dropout applies (sampling, eval), else autodiff;
                    pallas: the fused Pallas TPU kernels with in-kernel dropout for causal
                    self-attention (`model.kernels.flash_attention`; Pallas' interpret mode off
                    a TPU, for tests), with a KV cache as decode_attention_impl says;
                    cudnn: `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16)
                    where no attention dropout applies, else custom
  layer_norm_impl   custom: hand-written backward (`model.normalization`);
                    flax: `flax.linen.LayerNorm(use_fast_variance=False)`
  gelu_dropout_impl custom: GELU + dropout with a hand-written backward (`model.dropout`);
                    autodiff: the same forward under plain autodiff
  linear_impl       flat: one [N, in] x [in, out] matmul where the sharding allows;
                    dot_general: the N-d contraction (`jnp.tensordot`, as DenseGeneral)
  decode_attention_impl (sampling: the attention of a token step against the KV cache)
                    segmented: attention_impl's attention on a [B, H, S, K] cache, the token
                    loop in 4 segments, each segment's cache as long as its last position;
                    pallas: the Pallas decode kernel on a flat [B, S, H K] cache that reads only
                    the filled key blocks, one segment (`model.kernels.decode_attention`)
  split_impl        chunked: the AdaLN modulation and the qkv projection computed chunk-major
                    ([n, B, T, D], [3, B, H, T, K]: one slab per chunk, its bias added where it
                    is read) and the output projection contracted on [B, H, T, K] in place
                    (`layers.ChunkedLinear`, `layers.ProjLinear`; linear_impl does not apply to
                    these three); fused: one token-major product [B, T, n, ...] split after
                    (`layers.Linear`), the plain reference

All settings compute the same function (tests/model/test_model.py checks the golden logits
under each).
The evidence for each default is in docs/measurements/performance.md: CPU from
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
  "split_impl": ("chunked", "fused"),
  "decode_attention_impl": ("segmented", "pallas"),
}
AUTO = "auto"

LIBRARY = {
  "attention_impl": "xla",
  "layer_norm_impl": "flax",
  "gelu_dropout_impl": "autodiff",
  "linear_impl": "dot_general",
  "split_impl": "fused",
  "decode_attention_impl": "segmented",
}
DEFAULTS: dict[str, dict[str, str]] = {
  # Measured fastest on the 2-core CPU (docs/measurements/performance.md, CPU table).
  "cpu": {
    "attention_impl": "custom",
    "layer_norm_impl": "custom",
    "gelu_dropout_impl": "custom",
    "linear_impl": "flat",
    "split_impl": "fused",
    "decode_attention_impl": "segmented",
  },
  # From the TPU compiler (docs/measurements/performance.md, TPU): each default is chosen by two
  # figures, the time estimate of the train step (`bench --compile_only`, unrolled 1- and
  # 2-layer programs) and the memory of the full-depth scanned program at the official batch
  # (`rar-plan --config=configs/imagenet.py:XXL --topology=v5p-128`). The hand-written attention
  # wins on time; the hand-written layer norm and GELU + dropout cost the same time but keep the
  # scanned program's saved activations small (the library paths' autodiff residuals took RAR-XXL
  # from 62 to 94 GiB per chip); the chunked split removes the AdaLN/qkv layout copies and the
  # lone bias-gradient reduce (the compiler's cycle estimates) and 1 GiB of RAR-XXL's scanned
  # program, at the same per-layer time estimate; the flat matmul costs time on the TPU. The
  # fused Pallas attention (issue 25) takes 0.90x (B) and 0.93x (XL) of the hand-written one's
  # step estimate, its kernels counted, and less memory (RAR-XXL full depth, scanned, with the
  # hand-written layer norm and GELU: 57.6 instead of 62.2 GiB per chip). Sampling keeps the
  # segmented cache: RAR-XL's guided call at 256 images per v5p chip, counted exactly, is 3.34 s
  # against 3.55 s with the decode kernel (docs/measurements/sampling_speed.md).
  "tpu": {
    "attention_impl": "pallas",
    "layer_norm_impl": "custom",
    "gelu_dropout_impl": "custom",
    "linear_impl": "dot_general",
    "split_impl": "chunked",
    "decode_attention_impl": "segmented",
  },
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
