"""Host allocator settings for the CPU backend.

XLA:CPU allocates every temporary and output buffer with malloc. glibc serves allocations above
its mmap threshold (and every large allocation made from a thread arena) with a fresh mmap and
returns them to the OS on free, so each step of a training job touches hundreds of megabytes of
new pages: page faults and kernel time on every step. Keeping freed memory in one heap for
reuse removes those faults (measured in docs/measurements/performance.md). The process then
holds on to its peak heap, which is what a training loop reuses every step anyway.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
  """Makes glibc malloc reuse freed memory instead of unmapping it: one arena, no mmap-served
  allocations, no trimming. Call it first thing in a process, before JAX starts threads (the
  arena limit applies to arenas created afterwards). Returns False, changing nothing, where the
  C library is not glibc."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
  return all(mallopt(param, value) == 1 for param, value in settings)
