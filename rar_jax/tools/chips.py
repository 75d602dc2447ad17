"""Accelerator chips and topology names for the planner: HBM per chip, the JAX device kind (for
`metrics.peak_tflops`), and "v5p-128"-style names parsed into (chip, count). Plain Python, so the
planner can read a topology before jax is imported."""

from __future__ import annotations

import dataclasses
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """An accelerator: its JAX device_kind (for metrics.peak_tflops) and HBM per chip."""

  name: str
  device_kind: str
  hbm_gib: float
  cores_in_name: int = 1  # topology suffix units per chip (TensorCores: 2 for v4 and v5p)

  @property
  def is_gpu(self) -> bool:
    return not self.device_kind.startswith("TPU")


CHIPS: dict[str, Chip] = {
  "v4": Chip("v4", "TPU v4", 32, cores_in_name=2),
  "v5e": Chip("v5e", "TPU v5 lite", 16),
  "v5p": Chip("v5p", "TPU v5p", 95, cores_in_name=2),
  "v6e": Chip("v6e", "TPU v6 lite", 32),
  "a100": Chip("a100", "A100", 80),
  "a100-40gb": Chip("a100-40gb", "A100", 40),
  "h100": Chip("h100", "H100", 80),
  "h200": Chip("h200", "H200", 141),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e", "a100_40gb": "a100-40gb"}


def chip_by_name(name: str) -> Chip:
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
