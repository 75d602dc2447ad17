"""The pure training step: random orders and label dropout from fold_in(rng, step), the
permuted next-token loss, gradients and the optax update. No I/O."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.model import rar, token_orders
from rar_jax.model.presets import ModelConfig
from rar_jax.training import losses, randomization
from rar_jax.training.train_state import TrainState

Batch = dict[str, jax.Array]  # tokens int32 [B, L], label int32 [B]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The static inputs of a step."""

  model: ModelConfig
  anneal_start: int
  anneal_end: int
  label_dropout: float


def train_step(
  sc: StepConfig,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  state: TrainState,
  batch: Batch,
) -> tuple[TrainState, Metrics]:
  """One optimizer step on a global batch; returns the new state and scalar metrics."""
  cfg = sc.model
  tokens, labels = batch["tokens"], batch["label"]
  b, seq_len = tokens.shape
  order_key, label_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step), 3)
  ratio = randomization.randomness_ratio(state.step, sc.anneal_start, sc.anneal_end)
  orders = token_orders.sample_orders(order_key, b, seq_len, ratio)  # [B, L]
  labels = randomization.drop_labels(label_key, labels, sc.label_dropout, cfg.null_class)
  targets = token_orders.permute(tokens, orders)  # [B, L]

  def loss_fn(params):
    logits = rar.forward(cfg, params, tokens, labels, orders, dropout_rng=dropout_key)
    return losses.next_token_loss(logits, targets)

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": loss,
    "accuracy": accuracy,
    "grad_norm": optax.tree.norm(grads),
    "param_norm": optax.tree.norm(params),
    "learning_rate": schedule(state.step),
    "random_ratio": ratio,
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def jit_train_step(
  sc: StepConfig,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  mesh: Mesh,
  state_sharding: TrainState,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """The step jitted with explicit in/out shardings and the state donated.

  Call it inside `sharding.activate(mesh)` so the activation annotations resolve.
  """
  batch_sharding = sharding.batch_sharding(mesh)
  return jax.jit(
    functools.partial(train_step, sc, tx, schedule),
    in_shardings=(state_sharding, {"tokens": batch_sharding, "label": batch_sharding}),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=0,
  )


def abstract_batch(mesh: Mesh, global_batch: int, seq_len: int) -> Batch:
  """ShapeDtypeStructs of a global batch, sharded over the mesh's batch axes."""
  sh = sharding.batch_sharding(mesh)
  return {
    "tokens": jax.ShapeDtypeStruct((global_batch, seq_len), jnp.int32, sharding=sh),
    "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=sh),
  }


def compile_train_step(
  sc: StepConfig,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  mesh: Mesh,
  abstract_state: TrainState,
  global_batch: int,
) -> tuple[Any, float, float]:
  """The step compiled ahead of time for abstract (sharded) inputs, as the training job, the
  planner and the benchmark run it. Returns (compiled, lowering seconds, compile seconds)."""
  state_sharding = jax.tree.map(lambda a: a.sharding, abstract_state)
  step_fn = jit_train_step(sc, tx, schedule, mesh, state_sharding)
  batch = abstract_batch(mesh, global_batch, sc.model.seq_len)
  with sharding.activate(mesh):
    start = time.perf_counter()
    lowered = step_fn.lower(abstract_state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
  return compiled, lowered_at - start, time.perf_counter() - lowered_at
