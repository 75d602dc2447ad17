"""The allocator setting removes the page faults of re-allocated XLA:CPU buffers."""

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys
from rar_jax.infra import host_memory
applied = host_memory.retain_freed_memory() if sys.argv[1] == "1" else False
import jax, jax.numpy as jnp
x = jnp.ones((2048, 4096))  # 32 MiB
f = jax.jit(lambda x: x * 2.0 + 1.0)  # a fresh 32 MiB output every call
for _ in range(10):
  f(x).block_until_ready()
per_call = []
for _ in range(21):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  per_call.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median call: with retained memory the heap still grows now and then (8k faults once),
# without it every call faults its 32 MiB in.
print(json.dumps({"applied": applied, "faults": sorted(per_call)[10]}))
"""


def _faults(retain: bool) -> dict:
  out = subprocess.run(
    [sys.executable, "-c", _PROBE, "1" if retain else "0"],
    capture_output=True,
    text=True,
    check=True,
    env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_retaining_freed_memory_removes_page_faults():
  default, retained = _faults(False), _faults(True)
  assert retained["applied"]
  assert default["faults"] > 4000  # 32 MiB of fresh pages per call (4 KiB pages)
  assert retained["faults"] < default["faults"] / 10
