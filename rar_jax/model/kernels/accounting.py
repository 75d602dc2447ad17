"""The cost of Pallas kernel calls, counted by the kernels themselves.

XLA's cost analysis does not see inside a Pallas custom call (compiled for a v5p it reports about
1 KB and 0 s for one), so each kernel wrapper reports the FLOPs and HBM bytes of its block
structure when it is traced, and `bench --compile_only` adds them to the compiler's figures. A
program traced under `collect()` gathers one record per traced call: a call inside a loop body (a
scanned layer, the sampler's token loop) is recorded once, as XLA's own analysis counts it, and is
scaled the same way (per-layer extrapolation, trip counts).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence

# The TPU compiler's own ceilings for a v5p, measured here: a bf16 8192^3 matmul at 394 TFLOP/s
# and a 1 GiB add at 2.35 TB/s (docs/measurements/performance.md).
MATMUL_FLOPS_PER_S = 394e12
HBM_BYTES_PER_S = 2.35e12

_local = threading.local()


@dataclasses.dataclass(frozen=True)
class KernelCall:
  """One traced kernel call: its name, FLOPs and HBM bytes read plus written."""

  name: str
  flops: float
  bytes: float

  def seconds(
    self, flops_per_s: float = MATMUL_FLOPS_PER_S, bytes_per_s: float = HBM_BYTES_PER_S
  ) -> float:
    """Roofline time: the slower of the arithmetic and the HBM traffic."""
    return max(self.flops / flops_per_s, self.bytes / bytes_per_s)


def record(name: str, flops: float, bytes_accessed: float) -> None:
  """Called by a kernel wrapper at trace time; a no-op outside `collect()`."""
  calls = getattr(_local, "calls", None)
  if calls is not None:
    calls.append(KernelCall(name, float(flops), float(bytes_accessed)))


@contextlib.contextmanager
def collect() -> Iterator[list[KernelCall]]:
  """Gathers the kernel calls traced inside the block (this thread only)."""
  previous = getattr(_local, "calls", None)
  _local.calls = []
  try:
    yield _local.calls
  finally:
    _local.calls = previous


def summarize(calls: Sequence[KernelCall]) -> list[dict]:
  """One row per kernel name: {"name", "calls", "flops", "bytes", "seconds"}, sorted by name."""
  rows: dict[str, dict] = collections.defaultdict(
    lambda: {"calls": 0, "flops": 0.0, "bytes": 0.0, "seconds": 0.0}
  )
  for call in calls:
    row = rows[call.name]
    row["calls"] += 1
    row["flops"] += call.flops
    row["bytes"] += call.bytes
    row["seconds"] += call.seconds()
  return [{"name": name, **rows[name]} for name in sorted(rows)]
