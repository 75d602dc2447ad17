"""The RAR generator: embeddings with permuted and target-aware positions, the AdaLN-Zero
block stack (scanned or not, rematerialised or not), the final layer and the code head.

One module serves training (all L + 2 positions at once, no cache) and sampling (a window of
positions with a preallocated KV cache); see `RAR.__call__`.

Sequence layout, positions q = 0 .. L+1 (L = seq_len):
  q = 0      cls token                      + pos[0]
  q = 1      class token                    + pos[1]              + tape[2 + order[0]]
  q = 2 + i  token at raster order[i]       + pos[2 + order[i]]   + tape[2 + order[i+1]]
  (the last position, q = L+1, has no target and gets no target-aware term)
The AdaLN condition at q is class_embedding + timesteps[q].
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.model import layers
from rar_jax.model.presets import ModelConfig

Array = jax.Array
Params = Any
Cache = tuple[layers.KVCache, ...]  # one {"k", "v"} per layer (`layers.cache_shape`)

_REMAT_POLICIES = {
  "full": None,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _block_class(cfg: ModelConfig):
  if cfg.remat_policy == "none":
    return layers.Block
  return nn.remat(
    layers.Block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers
  )


class BlockStack(nn.Module):
  """`depth` blocks, either one `nn.scan` over stacked parameters (training) or an unrolled
  loop. KV-cache decoding runs unrolled, with one cache per layer (see `unscan`), so that every
  layer's cache is its own buffer, updated in place."""

  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(
    self, x: Array, c: Array, start: Array, cache: Cache | None
  ) -> tuple[Array, Cache | None]:
    cfg = self.cfg
    block = _block_class(cfg)
    if cfg.scan_layers:
      if cache is not None:
        raise ValueError("KV-cache decoding needs unscanned layers: use rar.unscan(cfg, params)")
      scanned = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
        length=cfg.depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      x, _ = scanned(cfg, self.deterministic, name="layers")(x, c, start, None)
      return x, None
    new_cache = []
    for i in range(cfg.depth):
      layer_cache = None if cache is None else cache[i]
      x, layer_cache = block(cfg, self.deterministic, name=f"layers_{i}")(x, c, start, layer_cache)
      new_cache.append(layer_cache)
    return x, None if cache is None else tuple(new_cache)


class RAR(nn.Module):
  """Class-conditional decoder-only transformer over image codes.

  Attributes:
    config: the resolved model config.
    deterministic: False enables dropout (needs a "dropout" rng).
  """

  config: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(
    self,
    ids: Array,
    class_tokens: Array,
    orders: Array,
    start: Array | int = 0,
    cache: Cache | None = None,
  ) -> tuple[Array, Cache | None]:
    """Runs positions [start, start + T) of the sequence.

    Args:
      ids: [B, T] int token ids at those positions (the id at q = 0 is ignored: cls).
      class_tokens: [B] int class token ids (class + codebook_size + 1).
      orders: [B, L] int, orders[b, i] = raster position generated at step i.
      start: first sequence position of this call (0 without a cache).
      cache: optional KV cache (one per layer, see `init_cache`) of length S >= start + T;
        only with unscanned layers.

    Returns:
      logits [B, T, codebook_size] float32 (position q predicts the token at step q - 1),
      and the updated cache (None without one).
    """
    cfg = self.config
    d, seq_len = cfg.width, cfg.seq_len
    table = self.param(
      "embeddings", layers.normal_init(("vocab", "embed")), (cfg.vocab_size, d), jnp.float32
    )
    cls_token = self.param("cls_token", layers.zeros_init(("embed",)), (d,), jnp.float32)
    pos_table, tape_table, step_table = (
      self.param(name, layers.normal_init(("positions", "embed")), (seq_len + 2, d), jnp.float32)
      for name in ("pos_embed", "target_aware_pos_embed", "timesteps_embeddings")
    )

    t = ids.shape[1]
    q = start + jnp.arange(t)  # [T] sequence positions
    x = jnp.take(table, ids, axis=0)  # [B, T, D]
    x = jnp.where((q == 0)[None, :, None], cls_token, x)
    prev = jnp.take(orders, jnp.clip(q - 2, 0, seq_len - 1), axis=1)  # [B, T]
    x = x + jnp.take(pos_table, jnp.where(q < 2, q, prev + 2), axis=0)
    nxt = jnp.take(orders, jnp.clip(q - 1, 0, seq_len - 1), axis=1)  # [B, T]
    has_target = ((q >= 1) & (q <= seq_len))[None, :, None]
    x = x + jnp.where(has_target, jnp.take(tape_table, nxt + 2, axis=0), 0.0)
    c = jnp.take(table, class_tokens, axis=0)[:, None, :] + jnp.take(step_table, q, axis=0)

    dtype = layers.compute_dtype(cfg)
    x = nn.with_logical_constraint(x.astype(dtype), ("batch", "length", "act_embed"))
    c = nn.with_logical_constraint(c.astype(dtype), ("batch", "length", "act_embed"))
    c = nn.silu(c)  # every AdaLN layer reads silu(c): compute it once
    x, cache = BlockStack(cfg, self.deterministic, name="blocks")(x, c, start, cache)
    x = layers.FinalLayer(cfg, name="final")(x, c)
    logits = layers.Linear(
      (cfg.codebook_size,), ("embed", "codes"), dtype, flat=layers.flat_matmuls(cfg), name="lm_head"
    )(x)
    logits = nn.with_logical_constraint(logits, ("batch", "length", "act_codes"))
    return logits.astype(jnp.float32), cache


def unscan(cfg: ModelConfig, params: Params) -> tuple[ModelConfig, Params]:
  """The same model with unrolled layers (what KV-cache decoding runs): layer i's parameters
  are slice i of the stacked ones. A no-op for an unscanned config."""
  if not cfg.scan_layers:
    return cfg, params
  stacked = params["blocks"]["layers"]
  blocks = {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(cfg.depth)}
  return dataclasses.replace(cfg, scan_layers=False), {**params, "blocks": blocks}


def init_cache(cfg: ModelConfig, batch: int, length: int | None = None) -> Cache:
  """A zero KV cache of `length` positions (default L + 1: every position a sampler feeds),
  laid out as `layers.cache_shape` (the flat cache rounded up to the decode kernel's blocks)."""
  shape = layers.cache_shape(cfg, batch, cfg.seq_len + 1 if length is None else length)
  dtype = layers.compute_dtype(cfg)
  return tuple(
    {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.depth)
  )


def class_tokens(cfg: ModelConfig, class_ids: Array) -> Array:
  """Class index in [0, num_classes] (num_classes = null class) -> token id."""
  return class_ids + cfg.class_offset


def raster_orders(cfg: ModelConfig, batch: int) -> Array:
  """[B, L] identity orders."""
  return jnp.broadcast_to(jnp.arange(cfg.seq_len, dtype=jnp.int32), (batch, cfg.seq_len))


def training_ids(cfg: ModelConfig, tokens: Array, class_ids: Array, orders: Array) -> Array:
  """[B, L + 2] ids of the full training sequence: [cls (0), class token, permuted tokens]."""
  tokens = jnp.asarray(tokens, jnp.int32)
  permuted = jnp.take_along_axis(tokens, jnp.asarray(orders), axis=1)  # [B, L]
  b = tokens.shape[0]
  prefix = jnp.stack([jnp.zeros((b,), tokens.dtype), class_tokens(cfg, class_ids)], axis=1)
  return jnp.concatenate([prefix.astype(permuted.dtype), permuted], axis=1)


def forward(
  cfg: ModelConfig,
  params: Params,
  tokens: Array,
  class_ids: Array,
  orders: Array | None = None,
  *,
  dropout_rng: Array | None = None,
) -> Array:
  """Teacher-forced logits of the whole sequence, as the official `forward_fn`.

  Args:
    cfg: model config.
    params: the model parameters (`{"params": ...}` contents, unboxed).
    tokens: [B, L] int codes in raster order.
    class_ids: [B] int class indices, num_classes for the null class.
    orders: [B, L] int generation orders; raster when None.
    dropout_rng: enables dropout (training) when given.

  Returns:
    [B, L + 1, codebook_size] float32 logits; position i < L predicts tokens[orders[:, i]].
  """
  if orders is None:
    orders = raster_orders(cfg, tokens.shape[0])
  ids = training_ids(cfg, tokens, class_ids, orders)
  model = RAR(cfg, deterministic=dropout_rng is None)
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  logits, _ = model.apply({"params": params}, ids, class_tokens(cfg, class_ids), orders, rngs=rngs)
  return logits[:, 1:]  # drop the cls position


def abstract_params(cfg: ModelConfig) -> Params:
  """Parameter tree of ShapeDtypeStructs, boxed with logical axis names (nn.Partitioned)."""
  return jax.eval_shape(lambda: _init(cfg, jax.random.key(0)))


def _init(cfg: ModelConfig, key: Array) -> Params:
  b = 1
  ids = jnp.zeros((b, cfg.num_positions), jnp.int32)
  orders = raster_orders(cfg, b)
  return RAR(cfg).init({"params": key}, ids, jnp.zeros((b,), jnp.int32), orders)["params"]


def init_params(cfg: ModelConfig, key: Array) -> Params:
  """Freshly initialised parameters (unboxed), as the official init: N(0, 0.02) weights and
  tables, zero biases, unit LayerNorms, zero cls token and zero AdaLN-Zero layers."""
  return nn.unbox(_init(cfg, key))


def param_shardings(cfg: ModelConfig, mesh: Mesh):
  """NamedSharding of every parameter, from its logical axis names."""
  return sharding.logical_shardings(abstract_params(cfg), mesh)


def sharded_abstract_params(cfg: ModelConfig, mesh: Mesh, dtype: Any = None) -> Params:
  """Unboxed parameter ShapeDtypeStructs (float32, or `dtype`) with their mesh shardings: the
  target for restoring parameters (exports, checkpoints) onto any mesh."""
  shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
  return sharding.abstract_arrays(shapes, param_shardings(cfg, mesh), dtype)


def init_params_sharded(cfg: ModelConfig, key: Array, mesh: Mesh) -> Params:
  """Initialises the parameters directly sharded over the mesh (never whole on one device)."""
  init = jax.jit(functools.partial(init_params, cfg), out_shardings=param_shardings(cfg, mesh))
  with sharding.activate(mesh):
    return init(key)
