"""Device mesh and logical-axis sharding rules.

The mesh has axes (data, fsdp, tensor). Parameters and activations are annotated with logical
axis names in the model; LOGICAL_RULES maps those names to mesh axes. Names not in the table
are replicated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

# Logical name -> mesh axes. Parameters: embed is FSDP-sharded, the wide dims tensor-sharded.
# Activations: batch over data x fsdp, heads/mlp/codes over tensor, embed replicated.
LOGICAL_RULES: Rules = (
  ("batch", BATCH_AXES),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("mod_embed", "tensor"),
  ("vocab", "tensor"),
  ("codes", "tensor"),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_codes", "tensor"),
  ("length", None),
  ("act_embed", None),
  ("head_dim", None),
  ("qkv", None),
  ("modulation", None),
  ("positions", None),
  ("norm", None),
  ("layers", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Fills the one -1 entry of a (data, fsdp, tensor) shape with the remaining devices.

  Raises:
    ValueError: naming the shape and device count when it does not fit.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: sizes must be positive, with at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh shape {shape} does not divide the {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
      f"mesh shape {shape} has {int(np.prod(shape))} devices but {num_devices} are available"
    )
  return shape


def make_mesh(
  shape: Sequence[int] = (-1, 1, 1), dcn_data: int = 1, devices: Sequence[Any] | None = None
) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh.

  Args:
    shape: per-slice (ICI) sizes; one may be -1.
    dcn_data: number of slices; the data axis spans them over DCN (multislice).
    devices: defaults to all devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) % dcn_data:
    raise ValueError(f"mesh.dcn_data={dcn_data} does not divide the {len(devices)} devices")
  ici = resolve_mesh_shape(shape, len(devices) // dcn_data)
  if dcn_data > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, (dcn_data, 1, 1), devices)
  elif devices[0].platform == "cpu":
    grid = np.asarray(devices).reshape(ici)
  else:
    grid = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES)


def logical_shardings(boxed_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for a tree of nn.Partitioned (or plain) array-like leaves.

  A dimension whose size the mapped mesh axes do not divide stays unsharded (for example the
  2026-row embedding table over tensor=4), so every config maps onto every mesh.
  """

  def one(leaf: Any) -> NamedSharding:
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    names = leaf.names if isinstance(leaf, nn.Partitioned) else (None,) * len(value.shape)
    spec = nn.logical_to_mesh_axes(names, LOGICAL_RULES)
    return NamedSharding(mesh, fit_spec(spec, value.shape, mesh))

  return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of every dimension they do not divide evenly."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    ways = int(np.prod([mesh.shape[a] for a in names]))
    fitted.append(axes if dim % ways == 0 else None)
  return PartitionSpec(*fitted)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a [B, ...] batch over the data-parallel axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of an array copied whole to every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the batch is split (data x fsdp)."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


@contextlib.contextmanager
def activate(mesh: Mesh) -> Iterator[None]:
  """Sets the mesh and the logical rules, so annotated code lowers to mesh shardings."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
    yield


def abstract_arrays(shapes: Any, shardings: Any, dtype: Any = None) -> Any:
  """ShapeDtypeStructs (shapes' dtype, or `dtype`) carrying the given shardings, leaf by leaf:
  the restore targets for Orbax and the inputs for ahead-of-time compiles."""
  return jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh), shapes, shardings
  )
