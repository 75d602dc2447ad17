"""A job that cannot fit its devices is refused before anything is allocated, in one line naming
what it needs and what the devices (or the host) have (rar_jax/infra/device_memory.py)."""

import resource

import pytest

from rar_jax.infra import device_memory

GIB = 2**30


class _Accelerator:
  """A device whose backend reports memory_stats, as TPUs and GPUs do."""

  platform, device_kind, process_index = "tpu", "TPU v5p", 0

  def __init__(self, id_, limit, in_use=0):
    self.id, self._stats = id_, {"bytes_limit": limit, "bytes_in_use": in_use}

  def memory_stats(self):
    return self._stats


def test_accelerators_are_checked_against_their_own_free_memory():
  devices = [_Accelerator(0, 95 * GIB), _Accelerator(1, 95 * GIB, in_use=10 * GIB)]
  device_memory.check_fits({"parameters": 40 * GIB, "optimizer state": 40 * GIB}, devices, "x")
  with pytest.raises(device_memory.DoesNotFitError) as caught:
    device_memory.check_fits({"parameters": 45 * GIB, "optimizer state": 45 * GIB}, devices, "h")
  assert str(caught.value) == (
    "the job does not fit: each device needs 90.0 GiB (parameters 45.0 GiB, optimizer state "
    "45.0 GiB) but TPU v5p 1 has 85.0 GiB free; h"
  )


def test_cpu_devices_share_the_host_and_the_address_space_limit_bounds_it(monkeypatch):
  import jax  # noqa: PLC0415

  cpus = jax.devices()[:4]
  assert cpus[0].platform == "cpu" and device_memory.device_available(cpus[0]) is None
  mapped = device_memory._mapped_bytes()  # noqa: SLF001
  monkeypatch.setattr(
    resource, "getrlimit", lambda what: (mapped + 3 * GIB, resource.RLIM_INFINITY)
  )
  available, bound = device_memory.host_available()
  assert available <= 3 * GIB and "ulimit -v" in bound
  device_memory.check_fits({"parameters": 100 * 2**20}, cpus, "h")
  with pytest.raises(device_memory.DoesNotFitError, match=r"^the job does not fit: it needs "
                     r"4\.0 GiB of host memory \(4 CPU devices x 1\.0 GiB: parameters 1\.0 GiB\) "
                     r"but has .* \(the address-space limit \(ulimit -v\).*; h$"):  # fmt: skip
    device_memory.check_fits({"parameters": GIB}, cpus, "h")
