"""The real TPU compiler without a TPU: abstract TPU devices from libtpu's topology descriptions.

`jax.experimental.topologies.get_topology_desc(platform="tpu")` describes a TPU slice (v4, v5e,
v5p, v6e) without opening any hardware; `jit(...).lower(...).compile()` on a mesh of its devices
runs libtpu's compiler ahead of time, so its memory and cost analyses are the TPU program's
(MaxText's train_compile.py does the same). Nothing is ever executed. Eager work (initializers,
`optax` inits under `eval_shape`) stays on the default backend, which should be the CPU
(`JAX_PLATFORMS=cpu` still allows these topologies).

Slices are named as libtpu names them, "<chip>:<dims>" (v5p:4x4x4 is 64 chips), or from a chip
count with `slice_shape` (v5p-128 in Cloud TPU's names is 64 chips, 4x4x4).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Sequence
from typing import Any

from rar_jax.infra.chips import Chip, chip_by_name

# Chips the TPU compiler can target, with their torus rank (3-D for v4 / v5p, 2-D otherwise).
TPU_CHIPS = {"v4": 3, "v5e": 2, "v5p": 3, "v6e": 2}
# libtpu's spelling of each chip in a topology name.
_LIBTPU_NAME = {"v4": "v4", "v5e": "v5e", "v5p": "v5p", "v6e": "v6e"}
# Devices per chip in libtpu's descriptions (v4's two TensorCores are separate devices there).
_DEVICES_PER_CHIP = {"v4": 2, "v5e": 1, "v5p": 1, "v6e": 1}


def unavailable_reason() -> str | None:
  """None when libtpu is importable (the TPU compiler can run here), else why not."""
  if importlib.util.find_spec("libtpu") is None:
    return "libtpu is not installed (pip install -e '.[tpu]', which brings jax[tpu])"
  return None


def is_tpu(chip: Chip) -> bool:
  """Whether the TPU compiler has a target for this chip."""
  return chip.name in TPU_CHIPS


def slice_shape(chip: Chip, chips: int) -> tuple[int, ...]:
  """The torus dims of a slice of `chips` chips: powers of two, as even as possible (64 v5p
  chips -> (4, 4, 4), 16 -> (2, 2, 4), 4 -> (2, 2, 1); 64 v6e chips -> (8, 8)).

  Raises:
    ValueError: a GPU chip, or a chip count that is not a power of two.
  """
  if not is_tpu(chip):
    raise ValueError(
      f"chip {chip.name!r} has no TPU compiler target; use one of {sorted(TPU_CHIPS)}"
    )
  if chips <= 0 or chips & (chips - 1):
    raise ValueError(f"{chips} {chip.name} chips is not a TPU slice (a power of two)")
  rank = TPU_CHIPS[chip.name]
  dims = [1] * rank
  for i in range(int(math.log2(chips))):
    dims[i % rank] *= 2
  # ascending, with unit dims last, as libtpu spells slices (2x2x1, 2x2x4, 4x4x4, 8x8)
  return tuple(sorted(d for d in dims if d > 1) + [d for d in dims if d == 1])


def parse_slice(name: str) -> tuple[Chip, tuple[int, ...]]:
  """ "v5p:2x2x1" -> (v5p, (2, 2, 1)).

  Raises:
    ValueError: not of that form, or a chip without a TPU compiler target.
  """
  match = re.fullmatch(r"([A-Za-z0-9]+):(\d+(?:x\d+)+)", name.strip())
  if not match:
    raise ValueError(f"TPU slice {name!r} is not of the form <chip>:<dims>, e.g. v5p:2x2x1")
  chip = chip_by_name(match.group(1))
  dims = tuple(int(d) for d in match.group(2).split("x"))
  if not is_tpu(chip):
    raise ValueError(
      f"TPU slice {name!r}: chip {chip.name!r} has no TPU compiler target; "
      f"use one of {sorted(TPU_CHIPS)}"
    )
  if len(dims) != TPU_CHIPS[chip.name] or min(dims) <= 0:
    rank = TPU_CHIPS[chip.name]
    raise ValueError(f"TPU slice {name!r}: {chip.name} slices have {rank} positive dims")
  return chip, dims


def slice_name(chip: Chip, dims: Sequence[int]) -> str:
  """libtpu's topology name, e.g. "v5p:4x4x4"."""
  return f"{_LIBTPU_NAME[chip.name]}:{'x'.join(str(d) for d in dims)}"


def devices(chip: Chip, dims: Sequence[int], num_slices: int = 1) -> list[Any]:
  """Abstract TPU devices of `num_slices` slices of shape `dims`, one per chip (a v4 chip's two
  TensorCores count as one device, as on real v4 hosts with megacore).

  Raises:
    ValueError: libtpu missing, or a topology libtpu rejects (the message names it).
  """
  reason = unavailable_reason()
  if reason:
    raise ValueError(f"cannot compile for {slice_name(chip, dims)}: {reason}")
  # Compile-only use never opens a TPU: several processes (the test workers, a planner next to
  # a CPU training job) may load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # noqa: PLC0415

  name = slice_name(chip, dims)
  kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
  try:
    desc = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
  except Exception as e:  # libtpu raises JaxRuntimeError with a long message
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"libtpu rejects TPU topology {name!r} x {num_slices} slices: {first}") from e
  found = list(desc.devices)
  per_chip = _DEVICES_PER_CHIP[chip.name]
  if per_chip > 1:
    found = [d for d in found if getattr(d, "core_on_chip", 0) == 0]
  expected = math.prod(dims) * num_slices
  if len(found) != expected:
    raise ValueError(f"libtpu describes {len(found)} devices for {name!r}, expected {expected}")
  return found
