"""Held-out evaluation during training: teacher-forced loss and token accuracy in raster order
(the order the sampler generates in) on the data set's validation split, with the true class
and no dropout. Jitted with explicit shardings like the train step and compiled once, ahead
of time; the split is padded to whole global batches (padding rows have weight 0).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rar_jax import sharding
from rar_jax.data import holdout, pipeline
from rar_jax.model import rar
from rar_jax.model.presets import ModelConfig

Batch = dict[str, jax.Array]  # tokens int32 [B, L], label int32 [B], weight float32 [B]
PREFIX = "heldout_raster_"


def eval_step(cfg: ModelConfig, params: Any, batch: Batch) -> dict[str, jax.Array]:
  """Sums over a batch: {"loss_sum", "correct_sum", "token_count"} (float32 scalars)."""
  tokens, weight = batch["tokens"], batch["weight"]
  logits = rar.forward(cfg, params, tokens, batch["label"])  # [B, L + 1, V], raster order
  logits = logits[:, :-1].astype(jnp.float32)  # position i predicts tokens[:, i]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)  # [B, L]
  correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)  # [B, L]
  w = weight[:, None]
  return {
    "loss_sum": (ce * w).sum(),
    "correct_sum": (correct * w).sum(),
    "token_count": weight.sum() * tokens.shape[1],
  }


def compile_eval_step(
  cfg: ModelConfig,
  mesh: Mesh,
  abstract_params: Any,
  global_batch: int,
) -> Any:
  """The eval step compiled ahead of time for the (sharded) abstract parameters."""
  batch_sh = sharding.batch_sharding(mesh)
  params_sh = jax.tree.map(lambda a: a.sharding, abstract_params)
  fn = jax.jit(
    functools.partial(eval_step, cfg),
    in_shardings=(params_sh, {"tokens": batch_sh, "label": batch_sh, "weight": batch_sh}),
    out_shardings=sharding.replicated(mesh),
  )
  batch = {
    "tokens": jax.ShapeDtypeStruct((global_batch, cfg.seq_len), jnp.int32, sharding=batch_sh),
    "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=batch_sh),
    "weight": jax.ShapeDtypeStruct((global_batch,), jnp.float32, sharding=batch_sh),
  }
  with sharding.activate(mesh):
    return fn.lower(abstract_params, batch).compile()


class HeldOutEval:
  """Loads the validation split (ValueError naming the metadata file when there is none) and
  compiles the step; calling it with the parameters returns the metrics of the whole split:
  {heldout_raster_loss, heldout_raster_accuracy, heldout_raster_bits_per_token}."""

  def __init__(
    self,
    data_dir: str,
    cfg: ModelConfig,
    mesh: Mesh,
    abstract_params: Any,
    global_batch: int,
  ):
    tokens, labels = holdout.validation_arrays(data_dir)  # [N, L], [N]
    if tokens.shape[1] != cfg.seq_len:
      raise ValueError(f"{data_dir}: validation records hold {tokens.shape[1]} tokens")
    n = len(labels)
    padded = -(-n // global_batch) * global_batch
    self.num_records = n
    self._tokens = np.resize(tokens, (padded, cfg.seq_len))  # [P, L]; rows >= n weigh 0
    self._labels = np.resize(labels, padded)  # [P]
    self._weight = (np.arange(padded) < n).astype(np.float32)  # [P]
    self._batch, self._mesh = global_batch, mesh
    self._local = pipeline.local_batch_size(global_batch, jax.process_count())
    self._sharding = sharding.batch_sharding(mesh)
    self._compiled = compile_eval_step(cfg, mesh, abstract_params, global_batch)

  def __call__(self, params: Any) -> dict[str, float]:
    sums = None
    lo = jax.process_index() * self._local  # this process's rows of every global batch
    for start in range(0, len(self._weight), self._batch):
      rows = slice(start + lo, start + lo + self._local)
      local = {"tokens": self._tokens[rows], "label": self._labels[rows]}
      local["weight"] = self._weight[rows]
      out = self._compiled(params, pipeline.to_global(local, self._sharding))
      sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = {k: float(v.addressable_data(0)) for k, v in sums.items()}  # replicated
    loss = sums["loss_sum"] / sums["token_count"]
    return {
      PREFIX + "loss": loss,
      PREFIX + "accuracy": sums["correct_sum"] / sums["token_count"],
      PREFIX + "bits_per_token": loss / math.log(2.0),
    }
