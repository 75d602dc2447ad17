"""Will a job fit? The memory it needs per device against what the devices have, checked before
anything is allocated, so that a job too big fails in one line instead of hanging or dying in
an allocation.

What the devices have: an accelerator's `memory_stats()` (bytes_limit less bytes_in_use); the
CPU backend reports none, so its devices share the host's available memory: the least of
MemAvailable (psutil), the cgroup's limit less its usage (containers), and the address-space
limit (`ulimit -v`) less what the process has mapped.

What a job needs, per device: the parameters and optimizer state of the sharded abstract state
(their shard bytes), and once the step is compiled ahead of time, its `memory_analysis()`: the
arguments, the outputs that do not alias an argument, the temporaries and the code
(`compiled_peak_bytes`, the planner's figure too).
"""

from __future__ import annotations

import resource
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rar_jax.infra import user_errors

_CGROUP_FILES = (  # (limit, usage): cgroup v2, then v1
  ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
  ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


class DoesNotFitError(user_errors.UserError):
  """The job needs more memory than its devices have (names both, and what to change)."""


def format_bytes(n: float) -> str:
  """1536 -> '1.5 KiB'; binary units up to TiB."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024:
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  return f"{n:.1f} TiB"


def _read_int(path: str) -> int | None:
  try:
    with open(path) as f:
      text = f.read().strip()
  except OSError:
    return None
  return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _mapped_bytes() -> int:
  """The process's virtual memory size (VmSize), 0 where /proc has none."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmSize:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def host_available() -> tuple[int, str]:
  """(bytes, what bounds them) the host can still give this process (module docstring)."""
  import psutil  # noqa: PLC0415 - only the CPU backend needs it

  found = [(int(psutil.virtual_memory().available), "available host memory")]
  for limit_path, usage_path in _CGROUP_FILES:
    limit, usage = _read_int(limit_path), _read_int(usage_path)
    if limit is not None and usage is not None and limit < 1 << 60:
      found.append((max(limit - usage, 0), "the container's memory limit, less its usage"))
      break
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft != resource.RLIM_INFINITY:
    found.append(
      (max(soft - _mapped_bytes(), 0), "the address-space limit (ulimit -v), less what is mapped")
    )
  return min(found)


def device_available(device: Any) -> tuple[int, str] | None:
  """(bytes, description) free on an accelerator, from its memory_stats; None where the backend
  reports none (the CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without the call raise various errors
    stats = None
  if not stats or "bytes_limit" not in stats:
    return None
  free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return free, f"{device.device_kind} {device.id} has {format_bytes(free)} free"


def compiled_peak_bytes(memory: Any) -> int:
  """Live bytes per device of a compiled program (its memory_analysis()): donated outputs reuse
  the argument buffers, so arguments + outputs - aliased + temporaries + code."""
  return int(
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
    + memory.temp_size_in_bytes
    + memory.generated_code_size_in_bytes
  )


def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a tree of (abstract) sharded arrays: its shard of each leaf."""
  total = 0
  import jax  # noqa: PLC0415 - infra stays importable without jax

  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def check_fits(needs: Mapping[str, int], devices: Sequence[Any], hint: str) -> None:
  """Raises DoesNotFitError when the bytes per device in `needs` (by what: "parameters",
  "optimizer state", ...) exceed what the local devices of the mesh have.

  Accelerators: every device against its own free memory. CPU devices share the host: the sum
  over this host's devices against `host_available`. hint: what to change, ending the message.
  """
  total = sum(needs.values())
  parts = ", ".join(f"{what} {format_bytes(n)}" for what, n in needs.items() if n)
  local = [d for d in devices if getattr(d, "process_index", 0) == _process_index()]
  accelerators = [(d, device_available(d)) for d in local]
  short = [(d, free) for d, free in accelerators if free is not None and free[0] < total]
  if short:
    device, (_, has) = min(short, key=lambda item: item[1][0])
    raise DoesNotFitError(
      f"the job does not fit: each device needs {format_bytes(total)} ({parts}) but {has}; {hint}"
    )
  on_host = [d for d, free in accelerators if free is None]
  if not on_host:
    return
  available, bound = host_available()
  need = total * len(on_host)
  if need > available:
    per = f"{len(on_host)} {on_host[0].platform.upper()} devices x {format_bytes(total)}: "
    raise DoesNotFitError(
      f"the job does not fit: it needs {format_bytes(need)} of host memory "
      f"({per if len(on_host) > 1 else ''}{parts}) but has {format_bytes(available)} ({bound}); "
      f"{hint}"
    )


def _process_index() -> int:
  import jax  # noqa: PLC0415

  return jax.process_index()
