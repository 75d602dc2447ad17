"""The cost of Pallas kernel calls, counted by the kernels themselves.

XLA's cost analysis does not see inside a Pallas custom call (compiled for a v5p it reports about
1 KB and 0 s for one), so each kernel wrapper reports the FLOPs and HBM bytes of its block
structure when it is traced, and `bench --compile_only` adds them to the compiler's figures. A
program traced under `collect()` gathers one record per traced call: a call inside a loop body (a
scanned layer, the sampler's token loop) is recorded once, as XLA's own analysis counts it, and is
scaled the same way (per-layer extrapolation), except in a loop that declares its trips
(`reaches`: the sampler's token loop), where a record stands for every run of the call.
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
  runs: int = 1  # runs of the call this record stands for (a declared loop's trips; `reaches`)

  def seconds(
    self, flops_per_s: float = MATMUL_FLOPS_PER_S, bytes_per_s: float = HBM_BYTES_PER_S
  ) -> float:
    """Roofline time: the slower of the arithmetic and the HBM traffic."""
    return max(self.flops / flops_per_s, self.bytes / bytes_per_s)


def record(name: str, flops: float, bytes_accessed: float) -> None:
  """Called by a kernel wrapper at trace time; a no-op outside `collect()`. Inside a `reaches`
  declaration the call stands for one run per declared trip (flops and bytes: the mean run's)."""
  calls = getattr(_local, "calls", None)
  if calls is not None:
    declared = getattr(_local, "reaches", None)
    runs = 1 if declared is None else declared[1]
    calls.append(KernelCall(name, float(flops), float(bytes_accessed), runs))


@contextlib.contextmanager
def collect() -> Iterator[list[KernelCall]]:
  """Gathers the kernel calls traced inside the block (this thread only)."""
  previous = getattr(_local, "calls", None)
  _local.calls = []
  try:
    yield _local.calls
  finally:
    _local.calls = previous


@contextlib.contextmanager
def reaches(values: Sequence[int], runs: int | None = None) -> Iterator[None]:
  """Declares, for the kernel calls traced inside the block, the cache positions a call reaches
  on each run of the enclosing loop (a sampler's token loop: start + T per trip), so a call whose
  reach is a traced value records its mean cost over those runs (`declared_reaches`) and stands
  for `runs` of them (default: one per value; 1 for one call at a typical position)."""
  previous = getattr(_local, "reaches", None)
  values = [int(v) for v in values]
  _local.reaches = (values, len(values) if runs is None else runs)
  try:
    yield
  finally:
    _local.reaches = previous


def declared_reaches() -> list[int] | None:
  """The innermost `reaches` declaration's values, or None outside one."""
  declared = getattr(_local, "reaches", None)
  return None if declared is None else declared[0]


def summarize(calls: Sequence[KernelCall]) -> list[dict]:
  """One row per kernel name: {"name", "calls", "flops", "bytes", "seconds"} over every run the
  records stand for, sorted by name."""
  rows: dict[str, dict] = collections.defaultdict(
    lambda: {"calls": 0, "flops": 0.0, "bytes": 0.0, "seconds": 0.0}
  )
  for call in calls:
    row = rows[call.name]
    row["calls"] += call.runs
    row["flops"] += call.runs * call.flops
    row["bytes"] += call.runs * call.bytes
    row["seconds"] += call.runs * call.seconds()
  return [{"name": name, **rows[name]} for name in sorted(rows)]
