"""One process of a 2-process CPU training run (jax.distributed over gloo, 4 devices each).

  python tests/helpers/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR DATA_DIR STEPS \
      [PAUSE_AT]

Process 0 writes every parameter, gathered from both processes, to WORKDIR/params.npz. With
PAUSE_AT, each process prints "PAUSED <step>" once that checkpoint is on disk and idles a while.
"""

import os
import sys


def main(argv):
  pid, count, port, workdir, data_dir, steps = argv[1:7]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ.update(
    JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=count, JAX_PROCESS_ID=pid
  )
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from rar_jax.infra import console, distributed

  console.setup()  # as rar_jax.main: the console lines, third-party INFO off
  distributed.initialize()  # the same call rar_jax.main makes
  import numpy as np
  from flax import traverse_util
  from jax.experimental import multihost_utils

  from rar_jax.training import train
  from tests.helpers import train_worker

  train_worker.pause_after_checkpoint(int(argv[7]) if len(argv) > 7 else None, seconds=30)
  state = train.train_and_evaluate(train_worker.tiny_config(data_dir, int(steps)), workdir)
  flat = traverse_util.flatten_dict(state.params, sep="/")
  gathered = {
    k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in flat.items()
  }
  if jax.process_index() == 0:
    np.savez(os.path.join(workdir, "params.npz"), **gathered)


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  main(sys.argv)
