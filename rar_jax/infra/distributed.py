"""Multi-process start-up (`jax.distributed.initialize` before anything queries devices) and the
host-side agreements between processes."""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

# Explicit coordinator variables (any cluster): address host:port, process count and id.
EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def detect(env: Mapping[str, str] = os.environ) -> dict | None:
  """How this process should join a multi-process run, or None for a single process.

  Returns the keyword arguments for jax.distributed.initialize: explicit values from the
  JAX_* variables, or {} to let JAX auto-detect the cluster (RAR_DISTRIBUTED=1, set by
  launch/tpu.sh on Cloud TPU VMs whose topology JAX reads from the metadata server; a SLURM
  job; TPU worker variables in the environment).
  """
  if env.get("RAR_DISTRIBUTED", "").lower() in ("1", "true"):
    return {}  # asked for explicitly (launch/tpu.sh): JAX detects the TPU slice from metadata
  present = [name for name in EXPLICIT if env.get(name)]
  if present:
    if len(present) != len(EXPLICIT):
      missing = sorted(set(EXPLICIT) - set(present))
      raise ValueError(
        f"set all of {EXPLICIT} for an explicit multi-process run; missing {missing}"
      )
    counts = {}
    for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
      if not env[name].isdigit():
        raise ValueError(f"{name}={env[name]!r} is not a non-negative integer")
      counts[name] = int(env[name])
    return {
      "coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
      "num_processes": counts["JAX_NUM_PROCESSES"],
      "process_id": counts["JAX_PROCESS_ID"],
    }
  if int(env.get("SLURM_NTASKS", "1")) > 1:
    return {}
  hosts = env.get("TPU_WORKER_HOSTNAMES", "")
  if "," in hosts or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return {}
  return None


def initialize(env: Mapping[str, str] = os.environ) -> None:
  """Joins the multi-process run this process belongs to, if any."""
  kwargs = detect(env)
  if kwargs is None:
    return
  jax.distributed.initialize(**kwargs)
  logging.info(
    "Process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def any_process(flag: bool) -> bool:
  """Whether flag is set on any process (a collective: every process gets the same answer)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def from_process_0(value: int) -> int:
  """Process 0's value on every process (a collective)."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
