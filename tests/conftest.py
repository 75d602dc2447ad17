"""Test setup: 8 simulated CPU devices, set before anything imports jax."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from rar_jax.infra import host_memory  # noqa: E402  (imports nothing heavy)

host_memory.retain_freed_memory()  # as the entry points do, before JAX starts threads

import pathlib  # noqa: E402

import pytest  # noqa: E402
from absl import flags  # noqa: E402

TESTDATA = pathlib.Path(__file__).parent / "testdata"


def pytest_configure(config):
  del config
  # Multiprocess grain reads absl flags; under pytest nothing parses them.
  flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def testdata() -> pathlib.Path:
  return TESTDATA
