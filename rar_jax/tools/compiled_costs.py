"""What a compiler makes of the train step and the sampler, without running them: programs
compiled ahead of time on abstract inputs (for a TPU slice from `tpu_compiler`, or any devices),
and their memory and cost analyses as plain numbers.

XLA's cost analysis counts a loop body once (a scanned layer, the sampler's token loop), so
per-layer figures come from unrolled 1- and 2-layer programs: C(depth) = C(1) + (depth - 1) x
(C(2) - C(1)), exact for a stack of identical layers. Pallas kernels are invisible to the cost
analysis; their own records (`model.kernels.accounting`) are extrapolated alike.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from configs import common
from rar_jax import sharding
from rar_jax.model import rar
from rar_jax.model.kernels import accounting
from rar_jax.model.presets import ModelConfig
from rar_jax.sampling import decoding
from rar_jax.training import optim, train_state, train_step

# The official recipe's optimizer and step count (configs/common.py, the one source of
# defaults); its values do not change the compiled program.
RECIPE = common.base_config()
MEMORY_KEYS = ("argument", "output", "alias", "temp", "generated_code")


def train_program(cfg: ModelConfig, mesh: Mesh, batch: int) -> tuple[Any, Any]:
  """The real train step compiled for `mesh` on abstract inputs: (compiled, abstract state).
  The abstract state is built outside `sharding.activate` (optax inits run eagerly on the
  default backend)."""
  tx, schedule = optim.make_optimizer(RECIPE.optim, cfg, RECIPE.train.steps)
  with accounting.collect():  # the state's shape traces run the model, but are not the program
    abstract = train_state.abstract_state(cfg, tx, mesh)
  sc = train_step.StepConfig(cfg, 0, 500, 0.1)
  return train_step.compile_train_step(sc, tx, schedule, mesh, abstract, batch)[0], abstract


def sample_program(
  cfg: ModelConfig,
  mesh: Mesh,
  batch: int,
  settings: decoding.SamplingConfig,
  param_dtype: Any = jnp.float32,
) -> Any:
  """The jitted KV-cache sampler (`decoding.make_sampler`) compiled for `mesh` on abstract
  parameters, [batch] class ids sharded over the batch axes and a replicated key."""
  with accounting.collect():  # the parameters' shapes come from a trace that is not the program
    params = rar.sharded_abstract_params(cfg, mesh, dtype=param_dtype)
  classes = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding.batch_sharding(mesh))
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
  with sharding.activate(mesh):
    return decoding.make_sampler(cfg, settings).lower(params, classes, key).compile()


def model_call_program(
  cfg: ModelConfig,
  mesh: Mesh,
  batch: int,
  window: int,
  settings: decoding.SamplingConfig,
  unroll: int = 1,
) -> Any:
  """Cached model calls of the sampler (`decoding.feeder`) as a sampling loop runs them: a
  `lax.scan` of 8 calls, each feeding `window` positions of every model row (2 x batch with
  guidance) at its own start against the whole L + 1 position cache it carries, `unroll` calls
  per iteration, compiled for `mesh`. XLA counts a loop body once, so the unroll-2 program less
  the unroll-1 program is one call in the loop (the one-off layout work outside it cancels). A
  decode kernel in it records the mean cost over a sampling call's starts, as one run."""
  rows = batch * (2 if settings.guided else 1)
  with accounting.collect():  # shape traces, not the program
    params = rar.sharded_abstract_params(cfg, mesh, dtype=jnp.dtype(cfg.dtype))
    cache = jax.eval_shape(lambda: rar.init_cache(cfg, rows))
  batch_sh = sharding.batch_sharding(mesh)
  classes = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batch_sh)
  ids = jax.ShapeDtypeStruct((rows, window), jnp.int32, sharding=batch_sh)
  cache = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=batch_sh), cache)
  starts = jnp.linspace(1, cfg.seq_len + 1 - window, 8).astype(jnp.int32)

  def calls(params, classes, ids, cache):
    feed = decoding.feeder(cfg, settings, params, classes, None)

    def call(cache, start):
      out, cache = feed.run(ids, start, cache)
      return cache, out[:, -1, 0]

    return jax.lax.scan(call, cache, starts, unroll=unroll)

  reaches = range(window + 1, cfg.seq_len + 2)  # a window fed at [s + 1, s + 1 + W)
  with sharding.activate(mesh), accounting.reaches(reaches, runs=1):
    jitted = jax.jit(calls, donate_argnums=3)
    return jitted.lower(params, classes, ids, cache).compile()


def analysis(compiled: Any) -> dict[str, float]:
  """Per device: memory_analysis bytes (argument, output, alias, temp, generated_code) and the
  cost analysis (flops, "bytes accessed", and the TPU compiler's "optimal_seconds")."""
  stats = compiled.memory_analysis()
  found = compiled.cost_analysis()
  if isinstance(found, (list, tuple)):
    found = found[0] if found else {}
  out = {k: float(getattr(stats, f"{k}_size_in_bytes")) for k in MEMORY_KEYS}
  for key in ("flops", "bytes accessed", "optimal_seconds"):
    if key in (found or {}):
      out[key] = float(found[key])
  return out


def _extrapolate(first: float, second: float, depth: int, first_depth: int) -> float:
  return first + (depth - first_depth) * (second - first)


def _kernel_rows(
  small: Sequence[Sequence[dict]], depth: int, depths: Sequence[int]
) -> tuple[list[dict], list[dict]]:
  """Per-layer and at-depth rows of the kernel calls recorded by programs at `depths`
  (`accounting.summarize` rows), extrapolated per kernel name as the compiler's costs are."""
  by_name = [{row["name"]: row for row in rows} for rows in small]
  names = sorted(set(by_name[0]) | set(by_name[1]))
  zero = {"calls": 0, "flops": 0.0, "bytes": 0.0, "seconds": 0.0}
  layer, full = [], []
  for name in names:
    a, b = by_name[0].get(name, zero), by_name[1].get(name, zero)
    layer.append({"name": name, **{k: b[k] - a[k] for k in zero}})
    full.append({"name": name, **{k: _extrapolate(a[k], b[k], depth, depths[0]) for k in zero}})
  return layer, full


def per_layer(
  compile_at_depth: Any, cfg: ModelConfig, depths: Sequence[int] = (1, 2)
) -> dict[str, Any]:
  """Analyses of unrolled programs at `depths` (1 and 2 layers), their per-layer difference and
  the extrapolation to cfg.depth; compile seconds summed. The Pallas kernel calls each program
  records (`model.kernels.accounting`; the cost analysis does not see into them) are
  extrapolated the same way: "kernels_per_layer", "kernels_at_depth" (summarize's rows)."""
  start = time.perf_counter()
  small, kernels = [], []
  for d in depths:
    with accounting.collect() as calls:
      small.append(analysis(compile_at_depth(dataclasses.replace(cfg, depth=d, scan_layers=False))))
    kernels.append(accounting.summarize(calls))
  layer = {k: small[1][k] - small[0][k] for k in small[0]}
  full = {k: _extrapolate(small[0][k], small[1][k], cfg.depth, depths[0]) for k in small[0]}
  kernels_layer, kernels_full = _kernel_rows(kernels, cfg.depth, depths)
  return {
    "per_layer": layer,
    "at_depth": full,
    "one_layer": small[0],
    "kernels_per_layer": kernels_layer,
    "kernels_at_depth": kernels_full,
    "compile_s": time.perf_counter() - start,
  }


# What an instruction of the train step does, from the `op_name` metadata the model's module
# and function names leave in the HLO: (group, regular expression), the first match wins.
CYCLE_GROUPS: tuple[tuple[str, str], ...] = (
  ("AdaLN modulation", r"/adaln/|/layers_\d+/(add|mul)$|/final/(add|mul)$"),
  ("qkv + projection", r"/attn/(qkv|proj|add_any)"),
  ("MLP matmuls", r"/mlp/fc\d"),
  ("MLP GELU + dropout", r"/mlp/"),
  ("LayerNorms", r"/(q_norm|k_norm|norm1|norm2|final/norm)/"),
  ("attention core", r"/attn/"),
  ("embedding, head and loss", r"RAR\)|jvp\(\)"),
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = .*? ([a-z][\w-]*)\(")


def cycle_shares(hlo_text: str) -> dict[str, float]:
  """Shares of the TPU compiler's `estimated_cycles` in a compiled program's entry computation
  (`compiled.as_text()`), grouped by `CYCLE_GROUPS`; layout copies and transposes that no group
  names are "layout copies", the rest (the optimizer, collectives) "other"."""
  cycles: dict[str, float] = {}
  inside = False
  for line in hlo_text.splitlines():
    if line.startswith("ENTRY"):
      inside = True
      continue
    if not inside:
      continue
    if line.startswith("}"):
      break
    match, found = _INSTRUCTION.match(line), re.search(r'"estimated_cycles":"(\d+)"', line)
    if not match or not found:
      continue
    op = re.search(r'op_name="([^"]*)"', line)
    name = op.group(1) if op else ""
    group = next((g for g, pattern in CYCLE_GROUPS if re.search(pattern, name)), None)
    if group is None:
      group = "layout copies" if match.group(1) in ("copy", "transpose") else "other"
    cycles[group] = cycles.get(group, 0.0) + float(found.group(1))
  total = sum(cycles.values())
  return {g: c / total for g, c in sorted(cycles.items(), key=lambda kv: -kv[1])} if total else {}
