"""The one chip table: per accelerator its JAX device kinds, HBM and dense bf16 peak FLOP/s, read
by the planner (fit and time), the training metrics (MFU) and the bench; and "v5p-128"-style
topology names parsed into (chip, count). Plain Python, so the planner can read a topology
before jax is imported."""

from __future__ import annotations

import dataclasses
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """An accelerator: its JAX device kinds, HBM and dense bf16 peak per chip (per JAX device)."""

  name: str
  device_kinds: tuple[str, ...]  # substrings of jax.Device.device_kind; the first is canonical
  hbm_gib: float
  peak_tflops: float
  cores_in_name: int = 1  # topology suffix units per chip (TensorCores: 2 for v4 and v5p)

  @property
  def device_kind(self) -> str:
    return self.device_kinds[0]

  @property
  def is_gpu(self) -> bool:
    return not self.device_kind.startswith("TPU")


CHIPS: dict[str, Chip] = {
  "v4": Chip("v4", ("TPU v4",), 32, 275.0, cores_in_name=2),
  "v5e": Chip("v5e", ("TPU v5 lite", "TPU v5e"), 16, 197.0),
  "v5p": Chip("v5p", ("TPU v5p", "TPU v5"), 95, 459.0, cores_in_name=2),
  "v6e": Chip("v6e", ("TPU v6 lite", "TPU v6e"), 32, 918.0),
  "a100": Chip("a100", ("A100",), 80, 312.0),
  "a100-40gb": Chip("a100-40gb", ("A100",), 40, 312.0),
  "h100": Chip("h100", ("H100",), 80, 989.0),
  "h200": Chip("h200", ("H200",), 141, 989.0),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "a100_40gb": "a100-40gb"}


def chip_of_device(device_kind: str) -> Chip | None:
  """The chip whose longest device-kind substring occurs in device_kind; None when unknown
  (e.g. "cpu"). "TPU v5 lite" is a v5e, "TPU v5" a v5p."""
  kind = device_kind.lower()
  matches = [(len(k), c) for c in CHIPS.values() for k in c.device_kinds if k.lower() in kind]
  return max(matches, key=lambda m: m[0])[1] if matches else None


def peak_tflops(device_kind: str) -> float | None:
  """Dense bf16 peak TFLOP/s of one device of this kind; None for an unknown chip (e.g. CPU)."""
  chip = chip_of_device(device_kind)
  return None if chip is None else chip.peak_tflops


def chip_by_name(name: str) -> Chip:
  """The chip of a topology prefix or table key ("v5p", "v5litepod", "h100", ...).

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  key = _ALIASES.get(name.lower(), name.lower())
  if key not in CHIPS:
    raise ValueError(f"unknown chip {name!r}; use one of {sorted(CHIPS)}")
  return CHIPS[key]


def parse_topology(topology: str) -> tuple[Chip, int]:
  """ "v5p-128" -> (v5p, 64 chips); "v6e-64" -> (v6e, 64); "h100-8" -> (h100, 8).

  Raises:
    ValueError: an unknown chip, or a TensorCore count that is not whole chips.
  """
  match = re.fullmatch(r"([A-Za-z0-9_]+)-(\d+)", topology.strip())
  if not match:
    raise ValueError(f"topology {topology!r} is not of the form <chip>-<count>, e.g. v5p-128")
  chip = chip_by_name(match.group(1))
  count = int(match.group(2))
  if count <= 0 or count % chip.cores_in_name:
    raise ValueError(
      f"topology {topology!r}: {chip.name}-N counts TensorCores ({chip.cores_in_name} per chip), "
      f"so N must be a positive multiple of {chip.cores_in_name}"
    )
  return chip, count // chip.cores_in_name
