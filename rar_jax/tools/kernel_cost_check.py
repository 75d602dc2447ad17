"""The check of the Pallas kernel accounting against the TPU compiler (ahead of time, no TPU).

XLA's cost analysis does not see into a Pallas call, so `bench --compile_only` adds the kernels'
own records (`rar_jax.model.kernels.accounting`: FLOPs and HBM bytes from the block structure,
time as the roofline max(FLOPs / 394e12, bytes / 2.35e12)). This compiles two kernels whose XLA
twins the compiler does see, an elementwise scale of a [4096, 1024] bf16 array and a bf16
[2048, 2048] x [2048, 2048] matmul in [512, 512] output blocks, and prints per program: the
kernel's record, the compiler's figures for the Pallas program (blind to the kernel) and for
the same op in plain XLA.

  JAX_PLATFORMS=cpu python -m rar_jax.commands.kernel_cost_check [--topology=v5p:2x2x1]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rar_jax.model.kernels import accounting

SCALE_SHAPE = (4096, 1024)
MATMUL_N = 2048
MATMUL_BLOCK = 512


def _scale_kernel(x_ref, y_ref):
  y_ref[...] = x_ref[...] * 2


def pallas_scale(x: jax.Array) -> jax.Array:
  """2 x [M, N] in blocks of [512, N], recording one read and one write of the array."""
  m, n = x.shape
  accounting.record("scale", x.size, 2 * x.size * x.dtype.itemsize)
  spec = pl.BlockSpec((512, n), lambda i: (i, 0))
  return pl.pallas_call(
    _scale_kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype), grid=(m // 512,),
    in_specs=[spec], out_specs=spec,
  )(x)  # fmt: skip


def _matmul_kernel(a_ref, b_ref, c_ref):
  c_ref[...] = jnp.dot(a_ref[...], b_ref[...], preferred_element_type=jnp.float32).astype(
    c_ref.dtype
  )


def pallas_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """[M, K] x [K, N] in [512, 512] output blocks with the whole K: a row block of `a` is read
  once per column block and a column block of `b` once per row block (N/512 and M/512 reads)."""
  (m, k), n, bs = a.shape, b.shape[1], MATMUL_BLOCK
  item = a.dtype.itemsize
  accounting.record("matmul", 2 * m * n * k, (m * k * (n // bs) + k * n * (m // bs) + m * n) * item)
  rows, cols = (
    pl.BlockSpec((bs, k), lambda i, j: (i, 0)),
    pl.BlockSpec((k, bs), lambda i, j: (0, j)),
  )
  return pl.pallas_call(
    _matmul_kernel, out_shape=jax.ShapeDtypeStruct((m, n), a.dtype), grid=(m // bs, n // bs),
    in_specs=[rows, cols], out_specs=pl.BlockSpec((bs, bs), lambda i, j: (i, j)),
  )(a, b)  # fmt: skip


def _cost(fn: Callable, args: list[Any], device: Any) -> tuple[dict[str, float], list[dict]]:
  """The compiler's (flops, bytes accessed, optimal_seconds) of fn on one device, and the
  kernel rows recorded while tracing it."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  abstract = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding) for a in args]
  with accounting.collect() as calls:
    compiled = jax.jit(fn).lower(*abstract).compile()
  found = compiled.cost_analysis()
  found = found[0] if isinstance(found, (list, tuple)) else found
  keys = ("flops", "bytes accessed", "optimal_seconds")
  return {k: float(found.get(k, 0.0)) for k in keys}, accounting.summarize(calls)


def check(topology: str = "v5p:2x2x1") -> list[dict]:
  """Per kernel: its own record, the compiler's view of the Pallas program, and of its twin."""
  from rar_jax.tools import tpu_compiler  # noqa: PLC0415

  chip, dims = tpu_compiler.parse_slice(topology)
  device = tpu_compiler.devices(chip, dims)[0]
  x = jax.ShapeDtypeStruct(SCALE_SHAPE, jnp.bfloat16)
  a = jax.ShapeDtypeStruct((MATMUL_N, MATMUL_N), jnp.bfloat16)
  cases = [
    ("scale", pallas_scale, lambda x: x * 2, [x]),
    ("matmul", pallas_matmul, lambda a, b: jnp.dot(a, b), [a, a]),
  ]
  rows = []
  for name, kernel, twin, args in cases:
    blind, records = _cost(kernel, args, device)
    xla, _ = _cost(twin, args, device)
    (record,) = records
    rows.append(
      {"name": name, "kernel": record, "compiler_on_pallas": blind, "compiler_on_xla": xla}
    )
  return rows
