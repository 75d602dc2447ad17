"""The pip requirements of the container image, read from setup.cfg (one per line).

  python launch/requirements.py setup.cfg tpu    # install_requires + the [tpu] extra

The Dockerfile installs these in a layer of their own, before the code is copied, so that a
change to the code rebuilds in seconds; setup.cfg stays the one place that pins versions.
Standard library only: it runs in the bare base image.
"""

import configparser
import sys


def requirements(setup_cfg: str, extra: str) -> list[str]:
  """install_requires followed by the named extra's requirements."""
  parser = configparser.ConfigParser()
  if not parser.read(setup_cfg):
    raise SystemExit(f"requirements.py: cannot read {setup_cfg}")
  extras = parser["options.extras_require"]
  if extra not in extras:
    raise SystemExit(f"requirements.py: setup.cfg has no extra {extra!r} (has {sorted(extras)})")
  lines = parser["options"]["install_requires"].splitlines() + extras[extra].splitlines()
  return [line.strip() for line in lines if line.strip()]


if __name__ == "__main__":
  if len(sys.argv) != 3:
    raise SystemExit("usage: python launch/requirements.py SETUP_CFG EXTRA")
  print("\n".join(requirements(sys.argv[1], sys.argv[2])))
