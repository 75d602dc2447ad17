"""Transformer layers of the RAR generator: attention with an explicit KV cache, MLP, and the
AdaLN-Zero block and final layer, with logical axis names on every parameter.

Shapes: B batch, T positions in this call, S cached positions, D width, H heads, K head dim,
M mlp dim. The conditioning `c` is per token, [B, T, D] (class embedding + per-step table); the
blocks and the final layer receive silu(c), which the model computes once.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from rar_jax.model import attention, dropout, normalization, numerics
from rar_jax.model.kernels import decode_attention
from rar_jax.model.presets import ModelConfig

LN_EPS = 1e-6
INIT_STD = 0.02

Array = jax.Array
# One layer's cache: {"k", "v"}, each [B, H, S, K] (heads before positions, the layout the
# attention matmuls read without a transpose), or [B, S, H K] for the Pallas decode kernel
# (`flat_cache`); the model keeps one per layer.
KVCache = dict[str, Array]


def flat_cache(cfg: ModelConfig) -> bool:
  """Whether the KV cache is [B, S, H K], read by the Pallas decode kernel
  (`kernels.decode_attention`; model.decode_attention_impl "pallas"), else [B, H, S, K]."""
  return numerics.impl(cfg, "decode_attention_impl") == "pallas"


def cache_shape(cfg: ModelConfig, batch: int, positions: int) -> tuple[int, ...]:
  """One layer's key (or value) cache shape for `positions` positions (the flat cache rounded up
  to whole key blocks of the kernel)."""
  if flat_cache(cfg):
    return (batch, decode_attention.cache_length(positions), cfg.width)
  return (batch, cfg.heads, positions, cfg.head_dim)


def cache_axes(cfg: ModelConfig) -> tuple[str | None, ...]:
  """Logical axes of a layer's cache: rows over the batch mesh axes, heads over the head axes."""
  if flat_cache(cfg):
    return ("batch", "length", "act_heads")
  return ("batch", "act_heads", "length", None)


def normal_init(names: tuple[str | None, ...]):
  """N(0, 0.02) initializer with logical axis names (the official trunc_normal is untruncated
  in practice: its cut-off is +-2 in absolute units, 100 sigma)."""
  return nn.with_logical_partitioning(nn.initializers.normal(INIT_STD), names)


def zeros_init(names: tuple[str | None, ...]):
  """Zeros with logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def ones_init(names: tuple[str | None, ...]):
  """Ones with logical axis names."""
  return nn.with_logical_partitioning(nn.initializers.ones_init(), names)


def compute_dtype(cfg: ModelConfig) -> Any:
  """The dtype activations are computed in (parameters stay float32)."""
  return jnp.dtype(cfg.dtype)


class LayerNorm(nn.Module):
  """LayerNorm with eps 1e-6 and exact (two-pass) variance, as torch.nn.LayerNorm; parameters
  "scale" and "bias" (Flax's names) when affine. Backward: `rar_jax.model.normalization`."""

  dtype: Any
  affine: bool = True
  axis_name: str = "norm"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    gamma = beta = None
    if self.affine:
      d = x.shape[-1]
      gamma = self.param("scale", ones_init((self.axis_name,)), (d,), jnp.float32)
      beta = self.param("bias", zeros_init((self.axis_name,)), (d,), jnp.float32)
    return normalization.layer_norm(x.astype(self.dtype), gamma, beta, LN_EPS)


def layer_norm(cfg: ModelConfig, name: str, affine: bool = True, axis_name: str = "norm"):
  """The LayerNorm module of the generator, computing in the config's dtype: ours, or Flax's
  with the same parameters ("scale", "bias", the same logical names) per model.layer_norm_impl."""
  if numerics.impl(cfg, "layer_norm_impl") == "custom":
    return LayerNorm(compute_dtype(cfg), affine, axis_name, name=name)
  return nn.LayerNorm(
    epsilon=LN_EPS,
    dtype=compute_dtype(cfg),
    param_dtype=jnp.float32,
    use_bias=affine,
    use_scale=affine,
    scale_init=ones_init((axis_name,)),
    bias_init=zeros_init((axis_name,)),
    use_fast_variance=False,
    name=name,
  )


class Linear(nn.Module):
  """Dense layer over the last `num_in` axes with an N-d kernel [*in, *features] and bias
  [*features], both carrying logical axis names (Flax's DenseGeneral initialises a flat kernel,
  which cannot carry N-d names)."""

  features: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  dtype: Any
  num_in: int = 1
  zero_init: bool = False
  flat: bool = True  # model.linear_impl: "flat" where the sharding allows, else "dot_general"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[x.ndim - self.num_in :]
    init = zeros_init if self.zero_init else normal_init
    kernel = self.param("kernel", init(self.kernel_axes), (*in_shape, *self.features), jnp.float32)
    bias_axes = self.kernel_axes[self.num_in :]
    bias = self.param("bias", zeros_init(bias_axes), self.features, jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    in_axes, out_axes = self.kernel_axes[: self.num_in], self.kernel_axes[self.num_in :]
    if self.flat and _mergeable(in_axes) and _mergeable(out_axes):
      # One [N, in] x [in, out] matmul: XLA:CPU runs the flat form and its gradients faster
      # than the N-d contraction (measured in docs/measurements/performance.md).
      n_in, n_out = math.prod(in_shape), math.prod(self.features)
      lead = x.shape[: x.ndim - self.num_in]
      y = (x.reshape(-1, n_in) @ kernel.reshape(n_in, n_out)).reshape(*lead, *self.features)
    else:
      y = jnp.tensordot(x, kernel, axes=self.num_in)
    return y + bias.astype(self.dtype)


class ProjLinear(nn.Module):
  """The attention output projection on [B, H, T, K] (heads before positions, as the attention
  returns it) or, with layout "bthk", [B, T, H, K] (the decode kernel's): `Linear`'s parameters
  (kernel [H, K, D], bias [D]) contracted over (H, K) in place, without a transpose first."""

  features: int
  kernel_axes: tuple[str | None, ...]
  dtype: Any
  layout: str = "bhtk"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h, k = x.shape[self.layout.index("h")], x.shape[self.layout.index("k")]
    kernel = self.param("kernel", normal_init(self.kernel_axes), (h, k, self.features), jnp.float32)
    bias = self.param("bias", zeros_init(self.kernel_axes[2:]), (self.features,), jnp.float32)
    y = jnp.einsum(f"{self.layout},hkd->btd", x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


def flat_matmuls(cfg: ModelConfig) -> bool:
  """Whether `Linear` layers use the flat matmul (model.linear_impl)."""
  return numerics.impl(cfg, "linear_impl") == "flat"


def _mergeable(axes: tuple[str | None, ...]) -> bool:
  """Whether kernel axes with these logical names can be merged into one without resharding:
  under the active mesh and rules, no axis after the first is split over more than 1 device."""
  mesh = jax.sharding.get_abstract_mesh()
  if len(axes) < 2 or mesh.empty:
    return True
  for entry in nn.logical_to_mesh_axes(axes)[1:]:
    names = () if entry is None else (entry if isinstance(entry, tuple) else (entry,))
    if math.prod(mesh.shape[name] for name in names) > 1:
      return False
  return True


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """AdaLN: x * (1 + scale) + shift."""
  return x * (1 + scale) + shift


def dropout_args(module: nn.Module, rate: float, deterministic: bool) -> tuple[Array | None, float]:
  """(seeds, rate) for the `rar_jax.model.dropout` functions, drawing the seeds from the module's
  "dropout" rng; (None, 0.0), drawing nothing, when deterministic or at rate 0."""
  if deterministic or rate == 0.0:
    return None, 0.0
  return dropout.seeds_from_key(module.make_rng("dropout")), rate


class Dropout(nn.Module):
  """Inverted dropout with hash-based masks (`rar_jax.model.dropout`)."""

  rate: float
  deterministic: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return dropout.drop(x, *dropout_args(self, self.rate, self.deterministic))


def chunked(cfg: ModelConfig) -> bool:
  """Whether the AdaLN modulation and the attention projections are chunk-major
  (model.split_impl "chunked", see `ChunkedLinear`)."""
  return numerics.impl(cfg, "split_impl") == "chunked"


class ChunkedLinear(nn.Module):
  """The parameters of a `Linear` with features (n, *rest) (kernel [*in, n, *rest], bias
  [n, *rest], the same names and logical axes), applied chunk-major: `einsum` names the output
  axes, e.g. "btd,dnhk->nbhtk" (the kernel operand's letters: in, n, rest). Returns the n chunks
  of the product, each with its bias slice added, so each chunk is one contiguous slab whose
  bias add fuses into its consumer (and its bias gradient into its producer's pass) instead of
  a token-major [B, T, n, ...] array split afterwards."""

  features: tuple[int, ...]
  kernel_axes: tuple[str | None, ...]
  dtype: Any
  einsum: str
  zero_init: bool = False

  @nn.compact
  def __call__(self, x: Array) -> list[Array]:
    num_in = len(self.kernel_axes) - len(self.features)
    in_shape = x.shape[x.ndim - num_in :]
    init = zeros_init if self.zero_init else normal_init
    kernel = self.param("kernel", init(self.kernel_axes), (*in_shape, *self.features), jnp.float32)
    bias_axes = self.kernel_axes[num_in:]
    bias = self.param("bias", zeros_init(bias_axes), self.features, jnp.float32)
    y = jnp.einsum(self.einsum, x.astype(self.dtype), kernel.astype(self.dtype))  # [n, ...]
    n = self.features[0]
    out = self.einsum.split("->")[1]
    rest = out[1:]  # the output letters after n; the bias broadcasts over the others
    bias_letters = self.einsum.split("->")[0].split(",")[1][num_in + 1 :]
    shape = [y.shape[1 + i] if ch in bias_letters else 1 for i, ch in enumerate(rest)]
    chunks = jax.lax.split(y, [1] * n, axis=0)
    return [chunk[0] + bias[i].astype(self.dtype).reshape(shape) for i, chunk in enumerate(chunks)]


class AdaLNModulation(nn.Module):
  """Linear(D, n*D) of the SiLU-activated condition, zero-initialised (AdaLN-Zero). Takes
  silu(c), computed once for all layers, and returns n arrays [B, T, D]."""

  cfg: ModelConfig
  num_chunks: int

  @nn.compact
  def __call__(self, c: Array) -> list[Array]:
    d = self.cfg.width
    axes = ("embed", "modulation", "mod_embed")
    if chunked(self.cfg):
      return ChunkedLinear(
        (self.num_chunks, d), axes, compute_dtype(self.cfg), "btd,dne->nbte", True, name="linear"
      )(c)
    mod = Linear(
      (self.num_chunks, d),
      axes,
      compute_dtype(self.cfg),
      zero_init=True,
      flat=flat_matmuls(self.cfg),
      name="linear",
    )(c)  # [B, T, n, D]
    # split, not n slices: its gradient is one concatenate instead of a sum of n padded arrays
    chunks = jax.lax.split(mod, [1] * self.num_chunks, axis=mod.ndim - 2)
    return [chunk[..., 0, :] for chunk in chunks]


class Attention(nn.Module):
  """Causal multi-head attention with qkv bias, per-head affine qk-LayerNorm and dropout.

  Without a cache it attends causally within the T given positions. With a cache (k, v of
  length S) it writes this call's keys/values at [start, start + T) and attends to every
  cached position up to its own.
  """

  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x: Array, start: Array, cache: KVCache | None) -> tuple[Array, KVCache | None]:
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    qkv_shape, qkv_axes = (3, cfg.heads, cfg.head_dim), ("embed", "qkv", "heads", "head_dim")
    # A [B, S, H K] cache (`flat_cache`): the decode kernel, on token-major [B, T, H, K] arrays.
    flat = cache is not None and flat_cache(cfg)
    layout = "bthk" if flat else "bhtk"
    if chunked(cfg):  # each straight from the matmul
      q, k, v = ChunkedLinear(qkv_shape, qkv_axes, dtype, f"btd,dshk->s{layout}", name="qkv")(x)
    else:
      qkv = Linear(qkv_shape, qkv_axes, dtype, flat=flat_matmuls(cfg), name="qkv")(x)
      # qkv: [B, T, 3, H, K]
      q, k, v = (qkv[:, :, i] if flat else jnp.swapaxes(qkv[:, :, i], 1, 2) for i in range(3))
    # The norms act on the last axis (head dim), the same in either layout.
    q = layer_norm(cfg, "q_norm", axis_name="head_dim")(q)
    k = layer_norm(cfg, "k_norm", axis_name="head_dim")(k)

    scale = cfg.head_dim**-0.5
    if flat:
      b, t = x.shape[:2]
      k_all, v_all = (
        jax.lax.dynamic_update_slice_in_dim(
          cache[name], new.reshape(b, t, cfg.width).astype(cache[name].dtype), start, 1
        )
        for name, new in (("k", k), ("v", v))
      )
      new_cache = {"k": k_all, "v": v_all}
      out = decode_attention.decode_attention(
        q, k_all, v_all, start, scale, *attention.mesh_axes()
      ).astype(dtype)  # [B, T, H, K]
    else:
      out, new_cache = self._attend(q, k, v, start, cache, scale)  # [B, H, T, K]
    proj_axes = ("heads", "head_dim", "embed")
    if chunked(cfg):  # contracts over (H, K) where they lie
      axes = (
        ("batch", "length", "act_heads", None) if flat else ("batch", "act_heads", "length", None)
      )
      out = nn.with_logical_constraint(out, axes)
      out = ProjLinear(cfg.width, proj_axes, dtype, layout, name="proj")(out)  # [B, T, D]
    else:
      out = out if flat else jnp.swapaxes(out, 1, 2)  # [B, T, H, K]
      out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", None))
      out = Linear((cfg.width,), proj_axes, dtype, 2, flat=flat_matmuls(cfg), name="proj")(out)
    # out: [B, T, D]
    out = Dropout(cfg.dropout, self.deterministic)(out)
    return out, new_cache

  def _attend(self, q, k, v, start, cache, scale):
    """The attention core on [B, H, *, K] arrays: causal self-attention without a cache, else
    this call's keys and values written at [start, start + T) of the [B, H, S, K] cache and
    every query against the cached positions up to its own. Returns (out, new cache)."""
    cfg, dtype = self.cfg, compute_dtype(self.cfg)
    q_pos = start + jnp.arange(q.shape[2])  # [T]
    blocks, new_cache = 1, None
    if cache is None:
      k_pos = q_pos
      blocks = cfg.attention_blocks
    else:
      k_all = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), start, 2)
      v_all = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), start, 2)
      new_cache = {"k": k_all, "v": v_all}
      k, v = k_all.astype(dtype), v_all.astype(dtype)  # [B, H, S, K]
      k_pos = jnp.arange(k.shape[2])
    mask = k_pos[None, :] <= q_pos[:, None]  # [T, S]
    seeds, rate = dropout_args(self, cfg.attn_dropout, self.deterministic)
    impl = numerics.impl(cfg, "attention_impl")
    out = attention.attend(impl, q, k, v, mask, seeds, scale, rate, blocks, causal=cache is None)
    return out, new_cache


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> dropout -> fc2 -> dropout, as timm's Mlp."""

  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    flat = flat_matmuls(cfg)
    h = Linear((cfg.mlp_dim,), ("embed", "mlp"), dtype, flat=flat, name="fc1")(x)  # [B, T, M]
    h = nn.with_logical_constraint(h, ("batch", "length", "act_mlp"))
    seeds, rate = dropout_args(self, cfg.dropout, self.deterministic)
    if numerics.impl(cfg, "gelu_dropout_impl") == "custom":
      h = dropout.gelu_then_drop(h, seeds, rate)
    else:
      h = dropout.drop(jax.nn.gelu(h, approximate=False), seeds, rate)
    h = Linear((cfg.width,), ("mlp", "embed"), dtype, flat=flat, name="fc2")(h)  # [B, T, D]
    return Dropout(cfg.dropout, self.deterministic)(h)


class Block(nn.Module):
  """Pre-LN transformer block with DiT-style AdaLN-Zero on a per-token condition.

  Call signature fits `nn.scan`: (x, c, start, cache) -> (x, cache).
  """

  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(
    self, x: Array, c: Array, start: Array, cache: KVCache | None
  ) -> tuple[Array, KVCache | None]:
    cfg = self.cfg
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = AdaLNModulation(
      cfg, 6, name="adaln"
    )(c)
    h = modulate(layer_norm(cfg, "norm1", axis_name="embed")(x), shift_msa, scale_msa)
    h, cache = Attention(cfg, self.deterministic, name="attn")(h, start, cache)
    x = x + gate_msa * h
    h = modulate(layer_norm(cfg, "norm2", axis_name="embed")(x), shift_mlp, scale_mlp)
    x = x + gate_mlp * Mlp(cfg, self.deterministic, name="mlp")(h)
    x = nn.with_logical_constraint(x, ("batch", "length", "act_embed"))
    return x, cache


class FinalLayer(nn.Module):
  """Non-affine LayerNorm modulated by the condition; chunk order (scale, shift)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, c: Array) -> Array:
    scale, shift = AdaLNModulation(self.cfg, 2, name="adaln")(c)
    return modulate(layer_norm(self.cfg, "norm", affine=False)(x), shift, scale)
