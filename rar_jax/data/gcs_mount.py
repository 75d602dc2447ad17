"""A gs:// `data.dir` is read through a gcsfuse mount of its bucket.

ArrayRecord opens each shard as a local file (its reader works on a file descriptor), so Grain
cannot read `gs://` shards directly. The bucket is mounted with gcsfuse at `/gcs/<bucket>`
(`launch/xpk.sh mount` for every XPK pod; docs/guides/tpu.md for TPU VMs) and `data.dir=gs://b/p` is
read at `/gcs/b/p`, so the same config runs on both. RAR_GCS_MOUNT moves the mount root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MOUNT_ROOT_ENV = "RAR_GCS_MOUNT"
DEFAULT_MOUNT_ROOT = "/gcs"


def local_path(path: str, env: Mapping[str, str] = os.environ) -> str:
  """path itself, or for gs://bucket/p the directory <mount root>/bucket/p.

  Raises:
    FileNotFoundError: a gs:// path whose mounted directory does not exist (naming both and
      the mount to make).
  """
  if not path.startswith("gs://"):
    return path
  rest = path.removeprefix("gs://").strip("/")
  bucket = rest.split("/")[0]
  root = env.get(MOUNT_ROOT_ENV) or DEFAULT_MOUNT_ROOT
  local = os.path.join(root, rest)
  if not os.path.isdir(local):
    raise FileNotFoundError(
      f"data.dir={path} is read through gcsfuse at {local}, which does not exist: mount the "
      f"bucket at {os.path.join(root, bucket)} (launch/xpk.sh mount --bucket {bucket}; "
      f"docs/guides/tpu.md) or set {MOUNT_ROOT_ENV} to where it is mounted"
    )
  return local
