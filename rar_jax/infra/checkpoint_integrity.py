"""Checksums of saved checkpoints: a manifest per step, written once Orbax committed the step,
and checked before the step is restored.

`<step>/checksums.json` lists the SHA-256 and size of every file under the step's folder
(`state/`, `data_iter/`, Orbax's metadata), relative to the folder. It lives inside the step so
that it is deleted (max_to_keep) or moved aside together with the step. Process 0 writes it
after Orbax's commit, which follows a barrier of all processes: on several hosts it covers the
files every process wrote (they all write into the same shared folder). A step without a
manifest (saved by an older version, or cut short between commit and manifest) is still
restorable but unverified.
"""

from __future__ import annotations

import enum
import hashlib
import json

from etils import epath

from rar_jax.infra import atomic_files

MANIFEST = "checksums.json"
_CHUNK = 1 << 20


class CorruptCheckpointError(ValueError):
  """A checkpoint file is missing or does not match its recorded checksum (names the file)."""


class Status(enum.IntEnum):
  """What `verify` found; an int so that processes can agree on it by a broadcast."""

  VERIFIED = 0
  UNVERIFIED = 1  # no manifest
  CORRUPT = 2


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def files_under(folder: epath.Path) -> list[epath.Path]:
  """Every file below folder, walked with iterdir (epath has no recursive glob on gs://)."""
  files = []
  for path in folder.iterdir():
    files += files_under(path) if path.is_dir() else [path]
  return files


def _files(step_dir: epath.Path) -> list[str]:
  """Every file under step_dir (relative, sorted), leaving out the manifest and its temp files."""
  names = (path.relative_to(step_dir).as_posix() for path in files_under(step_dir))
  return sorted(n for n in names if n != MANIFEST and not n.startswith(f".{MANIFEST}."))


def write_manifest(step_dir: epath.Path) -> None:
  """Records the size and SHA-256 of every file of a committed step in <step_dir>/checksums.json."""
  files = {}
  for rel in _files(step_dir):
    path = step_dir / rel
    files[rel] = {"bytes": path.stat().length, "sha256": _sha256(path)}
  manifest = {"algorithm": "sha256", "files": files}
  atomic_files.write_text(step_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def verify(step_dir: epath.Path) -> Status:
  """Checks every file of a step against its manifest.

  Returns:
    VERIFIED, or UNVERIFIED when the step has no manifest.

  Raises:
    CorruptCheckpointError: a file is missing, has another size or another checksum, or the
      manifest itself is unreadable; the message names the file.
  """
  manifest_path = step_dir / MANIFEST
  if not manifest_path.exists():
    return Status.UNVERIFIED
  try:
    files = json.loads(manifest_path.read_text())["files"]
  except (ValueError, KeyError, TypeError) as err:
    raise CorruptCheckpointError(f"{manifest_path} is unreadable ({err})") from err
  for rel, expected in sorted(files.items()):
    path = step_dir / rel
    if not path.exists():
      raise CorruptCheckpointError(f"{path} is missing")
    size = path.stat().length
    if size != expected["bytes"]:
      raise CorruptCheckpointError(f"{path} has {size} bytes, {expected['bytes']} were saved")
    if _sha256(path) != expected["sha256"]:
      raise CorruptCheckpointError(f"{path} does not match its saved SHA-256 checksum")
  return Status.VERIFIED
