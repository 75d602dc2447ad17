"""Read and write PyTorch state dicts (`torch.save(state_dict)`) without executing pickled code.

Reading needs no torch: the zip-based torch format (torch >= 1.6) is a zip archive holding
`<prefix>/data.pkl`, a pickle whose tensors refer to raw storages `<prefix>/data/<key>`. It is
unpickled with an allow-list of the few globals a state dict of tensors uses; any other global
(`os.system`, `builtins.eval`, ...) raises before it can run. bfloat16 tensors come back as
float32. `.npz` files are read with `np.load(allow_pickle=False)`.

Writing a torch file needs the optional torch (`pip install rar_jax[torch]`); `.npz` does not.
"""

from __future__ import annotations

import collections
import os
import pathlib
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from rar_jax.infra import atomic_files

_STORAGE_DTYPES = {
  "DoubleStorage": np.dtype(np.float64),
  "FloatStorage": np.dtype(np.float32),
  "HalfStorage": np.dtype(np.float16),
  "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
  "LongStorage": np.dtype(np.int64),
  "IntStorage": np.dtype(np.int32),
  "ShortStorage": np.dtype(np.int16),
  "CharStorage": np.dtype(np.int8),
  "ByteStorage": np.dtype(np.uint8),
  "BoolStorage": np.dtype(np.bool_),
  "ComplexFloatStorage": np.dtype(np.complex64),
  "ComplexDoubleStorage": np.dtype(np.complex128),
  "UntypedStorage": np.dtype(np.uint8),  # torch reads an untyped storage as bytes
}
# Leading bytes of a legacy (non-zip, torch < 1.6 or `_use_new_zipfile_serialization=False`)
# file: protocol 2 and torch's pickled magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


class _StorageType:
  """Stand-in for a `torch.*Storage` class: only carries the element dtype."""

  def __init__(self, dtype: np.dtype):
    self.dtype = dtype


# A tensor may be a view of part of a storage, or of the same storage as another tensor (tied
# weights); a stride-0 (expanded) or overlapping view reads the same elements several times, so
# a tiny file could ask for gigabytes. Allowed: any tensor whose logical size is within its
# storage's size, or exceeds it by at most _MAX_EXPANSION bytes, and in all at most
# _MAX_SHARING x the stored storages' bytes plus _MAX_EXPANSION.
_MAX_EXPANSION = 1 << 20
_MAX_SHARING = 4


class _Tensor:
  """A rebuilt tensor: a read-only strided view of its storage until `materialize` copies it
  (after the size checks of `_materialize_all`). Refuses BUILD."""

  __slots__ = ("view", "storage_bytes")

  def __init__(self, view: np.ndarray, storage_bytes: int):
    self.view, self.storage_bytes = view, storage_bytes

  def __setstate__(self, state: Any):
    raise pickle.UnpicklingError("unexpected state on a tensor")

  def materialize(self) -> np.ndarray:
    array = np.array(self.view)
    return array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks, meta=None):
  """Mirror of `torch._utils._rebuild_tensor_v2`: a strided view of a storage, copied out."""
  del requires_grad, hooks, meta
  if not isinstance(storage, np.ndarray) or storage.ndim != 1:
    raise pickle.UnpicklingError("tensor storage is not a persistent storage")
  size, stride = tuple(size), tuple(stride)
  ints = (storage_offset, *size, *stride)
  if len(size) != len(stride) or not all(type(i) is int and i >= 0 for i in ints):
    raise pickle.UnpicklingError(f"bad tensor geometry: offset {storage_offset}, {size}, {stride}")
  if 0 in size:
    view = np.empty(size, storage.dtype)
  else:
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
      raise pickle.UnpicklingError(f"tensor {size} at offset {storage_offset} exceeds storage")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(  # no copy: `_materialize_all` checks sizes first
      storage[storage_offset:], shape=size, strides=[s * item for s in stride], writeable=False
    )
  return _Tensor(view, storage.nbytes)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
  """Mirror of `torch._utils._rebuild_parameter[_with_state]`: the parameter's tensor."""
  del requires_grad, hooks, state
  if not isinstance(data, _Tensor):
    raise pickle.UnpicklingError("parameter data is not a tensor")
  return data


_ALLOWED = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
for _name, _dtype in _STORAGE_DTYPES.items():
  _ALLOWED["torch", _name] = _ALLOWED["torch.storage", _name] = _StorageType(_dtype)


class _TensorUnpickler(pickle.Unpickler):
  """Unpickler that knows only the globals of a tensor state dict and reads zip storages."""

  def __init__(self, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(archive.open(f"{prefix}/data.pkl"))
    self._archive, self._prefix, self._path = archive, prefix, path
    self._storages: dict[str, np.ndarray] = {}
    byteorder_file = f"{prefix}/byteorder"
    names = set(archive.namelist())
    self._swap = byteorder_file in names and archive.read(byteorder_file).strip() == b"big"

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(
        f"{self._path}: refusing to load global '{module}.{name}': only state dicts of tensors"
        " are allowed"
      )
    return _ALLOWED[module, name]

  @property
  def stored_bytes(self) -> int:
    """Bytes of all storages read so far."""
    return sum(storage.nbytes for storage in self._storages.values())

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] in ("storage", b"storage")):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
      raise pickle.UnpicklingError(f"bad storage reference {pid!r}")
    if key not in self._storages:
      dtype = storage_type.dtype
      raw = self._archive.read(f"{self._prefix}/data/{key}")
      if type(numel) is not int or not 0 <= numel * dtype.itemsize <= len(raw):
        raise pickle.UnpicklingError(f"storage {key}: {len(raw)} bytes, need {numel} x {dtype}")
      storage = np.frombuffer(raw, dtype, count=numel)
      self._storages[key] = storage.byteswap() if self._swap else storage
    return self._storages[key]


def _materialize_all(path: str, tensors: Mapping[str, _Tensor], stored: int) -> dict:
  """Copies each tensor out of its storage, after refusing expanded (stride-0 or overlapping)
  tensors beyond `_MAX_EXPANSION` and totals beyond `_MAX_SHARING` x the `stored` bytes."""
  limit, total = _MAX_SHARING * stored + _MAX_EXPANSION, 0
  for key, tensor in tensors.items():
    logical = tensor.view.nbytes
    if logical > tensor.storage_bytes + _MAX_EXPANSION:
      raise ValueError(
        f"{path}: tensor {key!r} of shape {tensor.view.shape} needs {logical} bytes from a "
        f"storage of {tensor.storage_bytes} (a stride-0 or overlapping view); refusing it"
      )
    total += logical
    if total > limit:
      raise ValueError(
        f"{path}: tensor {key!r} brings the tensors to {total} bytes, more than {_MAX_SHARING}x"
        f" the {stored} bytes stored (views sharing storages); refusing the file"
      )
  return {key: tensor.materialize() for key, tensor in tensors.items()}


def _load_torch_zip(path: str) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    head = f.read(len(_LEGACY_MAGIC))
  if not zipfile.is_zipfile(path):
    if head == _LEGACY_MAGIC:
      raise ValueError(
        f"{path}: legacy (non-zip) torch file, not supported; re-save it with a current torch:"
        " torch.save(torch.load(path), new_path)"
      )
    raise ValueError(f"{path}: not a zip-based torch file (corrupt or unknown format)")
  try:
    with zipfile.ZipFile(path) as archive:
      pkls = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
      if len(pkls) != 1:
        raise ValueError(f"{path}: expected one '<prefix>/data.pkl' in the archive, got {pkls}")
      unpickler = _TensorUnpickler(archive, pkls[0].split("/")[0], path)
      obj = unpickler.load()
  except pickle.UnpicklingError as e:
    msg = str(e) if str(e).startswith(path) else f"{path}: {e}"
    raise pickle.UnpicklingError(msg) from e
  except (zipfile.BadZipFile, EOFError, KeyError, TypeError, IndexError, AttributeError) as e:
    raise ValueError(f"{path}: corrupt or malformed torch checkpoint: {e!r}") from e
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a state dict, got a {type(obj).__name__}")
  for k, v in obj.items():
    if not isinstance(k, str) or not isinstance(v, _Tensor):
      raise ValueError(
        f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; only flat state dicts of"
        " tensors are supported (extract e.g. checkpoint['state_dict'] and save that)"
      )
  return _materialize_all(path, obj, unpickler.stored_bytes)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a state dict as {name: numpy array} without executing any pickled code.

  `.npz` files are read with `np.load(allow_pickle=False)`; any other file is read as a
  zip-based `torch.save` of a flat dict of tensors (no torch needed). bfloat16 becomes float32.

  Raises:
    FileNotFoundError: no file at `path`.
    pickle.UnpicklingError: the pickle references a global outside the tensor allow-list.
    ValueError: corrupt file, legacy (non-zip) torch file, or a value that is not a tensor.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no state dict file at {path}")
  if not path.endswith(".npz"):
    return _load_torch_zip(path)
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise ValueError(f"{path}: corrupt .npz file: {e!r}") from e


def _to_numpy(key: Any, value: Any) -> np.ndarray:
  if not isinstance(key, str):
    raise TypeError(f"state dict keys must be str, got {key!r}")
  array = np.asarray(value)
  if array.dtype.kind not in "biufc" and array.dtype != ml_dtypes.bfloat16:
    raise TypeError(f"state dict value {key!r} is not a numeric array: {type(value).__name__}")
  if not (array.flags.c_contiguous and array.flags.writeable and array.dtype.isnative):
    array = array.astype(array.dtype.newbyteorder("="), order="C", copy=True)
  return array


def save_state_dict(
  state: Mapping[str, np.ndarray], path: str | os.PathLike, *, overwrite: bool = False
) -> None:
  """Writes `state` as a `torch.save` file of tensors (official format), or `.npz` by suffix.

  The file is written under a temporary name in the same directory and renamed into place, so
  a failed write leaves neither a partial file nor a changed original.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
    ImportError: torch is needed (not a `.npz` path) but is not installed.
    TypeError: a key is not a str or a value is not a numeric array.
  """
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
  arrays = {k: _to_numpy(k, v) for k, v in state.items()}
  if path.suffix == ".npz":
    write = lambda f: np.savez(f, **arrays)
  else:
    try:
      import torch
    except ImportError as e:
      raise ImportError(
        f"writing torch file {path} needs torch: pip install rar_jax[torch] (or save as .npz)"
      ) from e

    def to_torch(a: np.ndarray) -> torch.Tensor:
      if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
      return torch.from_numpy(a)

    write = lambda f: torch.save({k: to_torch(a) for k, a in arrays.items()}, f)
  with atomic_files.open_for_write(path) as f:
    write(f)


def check_state_dict(
  state: Mapping[str, Any],
  expected: Mapping[str, tuple[int, ...]],
  what: str,
  optional: Callable[[str], bool] = lambda key: False,
) -> None:
  """Checks a state dict against the expected {name: shape}, before any conversion.

  Raises:
    ValueError: naming `what`, the first missing, unexpected (unless `optional`) or mis-shaped
      key, and both shapes.
  """
  missing = sorted(set(expected) - set(state))
  if missing:
    key = missing[0]
    raise ValueError(
      f"{what} is missing key {key!r} (expected shape {expected[key]}); "
      f"{len(missing)} key(s) missing in all"
    )
  unexpected = sorted(k for k in set(state) - set(expected) if not optional(k))
  if unexpected:
    key = unexpected[0]
    raise ValueError(f"{what} has unexpected key {key!r} with shape {tuple(np.shape(state[key]))}")
  for key, shape in expected.items():
    got = tuple(np.shape(state[key]))
    if got != shape:
      raise ValueError(f"{what} key {key!r} has shape {got}, expected {shape}")
