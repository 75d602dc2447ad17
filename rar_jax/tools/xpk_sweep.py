"""The runs of a sweep as XPK workloads: one per point, named from the point.

  python -m rar_jax.commands.xpk_sweep --config=configs/imagenet.py:L --workdir=gs://b/anneal \
      --prefix=rar-anneal [-- --config.data.dir=/gcs/b/tokens]

prints, for each point of the config's `get_hyper` (expanded, named and validated by
`rar_jax.tools.sweeps`, as `launch/sweep.py` does), one shell-quoted line: the workload name,
then the `rar_jax.main` arguments of the run. `launch/xpk.sh sweep` reads these lines.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

from rar_jax.tools import sweeps

# XPK's rule for workload names (a Kubernetes name of at most 40 characters).
MAX_NAME = 40
_VALID = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _short(run_name: str) -> str:
  """A sweep run name in few characters: each key by the initials of its words, each value with
  "p" for the decimal point ("anneal_start_fraction=0.25,optim.lr=0.0004" -> "asf0p25-ol0p0004")."""
  parts = []
  for part in run_name.split(","):
    key, sep, value = part.partition("=")
    if not sep:
      parts.append(part)
      continue
    initials = "".join(word[0] for word in re.split(r"[._]+", key) if word)
    parts.append(initials + value.replace(".", "p"))
  return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _digest(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:6]


def workload_name(prefix: str, run_name: str, *, digest: bool = False) -> str:
  """prefix-<short run name> as XPK accepts it: lowercase letters, digits and dashes, at most
  40 characters. A name cut short (or digest=True) ends with a digest of the whole run name.

  Raises:
    ValueError: the prefix itself is not a valid start of a name.
  """
  if not _VALID.fullmatch(prefix) or len(prefix) > MAX_NAME - 8:
    raise ValueError(
      f"workload prefix {prefix!r} must match {_VALID.pattern} and have at most "
      f"{MAX_NAME - 8} characters"
    )
  body = _short(run_name)
  name = f"{prefix}-{body}" if body else prefix
  if digest or len(name) > MAX_NAME:
    name = name[: MAX_NAME - 7].rstrip("-") + "-" + _digest(run_name)
  return name


def workloads(
  spec: str, base_workdir: str, prefix: str, extra: Sequence[str] = ()
) -> list[tuple[str, tuple[str, ...]]]:
  """(workload name, rar_jax.main arguments) of every run of the sweep, validated.

  Raises:
    ValueError: a bad sweep (named by sweeps.validate), or two points whose workload names
      coincide.
  """
  runs = sweeps.plan_sweep(spec, base_workdir, extra)
  sweeps.validate(sweeps.normalize_spec(spec), runs)
  names = [workload_name(prefix, run.name) for run in runs]
  if len(set(names)) != len(names):  # short names that coincide: tell them apart by digests
    names = [workload_name(prefix, run.name, digest=True) for run in runs]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep points give the same workload name: {names}")
  return [(name, run.main_args) for name, run in zip(names, runs, strict=True)]
