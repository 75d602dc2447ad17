"""The train state, its shardings, and its creation directly sharded over the mesh."""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.model import rar
from rar_jax.model.presets import ModelConfig


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `rng` is raw key data (uint32 [2]) so that Orbax
  stores it as a plain array; each step derives its randomness as fold_in(rng, step)."""

  step: jax.Array  # int32 []
  params: Any
  opt_state: optax.OptState
  rng: jax.Array  # uint32 [2]

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)


def create(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> TrainState:
  """A fresh state (pure; jit it with out_shardings to create it sharded)."""
  key = jax.random.key(seed)
  init_key, run_key = jax.random.split(key)
  params = rar.init_params(cfg, init_key)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.key_data(run_key),
  )


def state_shardings(
  cfg: ModelConfig,
  tx: optax.GradientTransformation,
  mesh: Mesh,
) -> TrainState:
  """NamedSharding of every leaf: optimizer moments follow their parameters, scalars replicate."""
  param_sh = rar.param_shardings(cfg, mesh)
  abstract = jax.eval_shape(functools.partial(create, cfg, tx), 0)
  replicated = sharding.replicated(mesh)
  opt_sh = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract.opt_state,
    param_sh,
    transform_non_params=lambda _: replicated,
  )
  return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)


def abstract_state(cfg: ModelConfig, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """ShapeDtypeStructs carrying the target shardings: the restore target for Orbax."""
  shapes = jax.eval_shape(functools.partial(create, cfg, tx), 0)
  return sharding.abstract_arrays(shapes, state_shardings(cfg, tx, mesh))


def init_sharded(
  cfg: ModelConfig,
  tx: optax.GradientTransformation,
  seed: int,
  mesh: Mesh,
) -> TrainState:
  """Creates the state already sharded: no array is ever whole on one device."""
  init = jax.jit(
    functools.partial(create, cfg, tx),
    static_argnums=0,
    out_shardings=state_shardings(cfg, tx, mesh),
  )
  with sharding.activate(mesh):
    return init(seed)
