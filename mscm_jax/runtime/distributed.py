"""Several processes, one run: `jax.distributed` start-up, who writes, barriers.

Every process runs the same program (JAX's multi-controller model): it decodes the same
data, makes the same decisions and calls every jitted step, whose mesh spans the devices
of all processes. Only process 0 writes the workdir (metrics, TensorBoard, identities,
results, the report, the logs); orbax saves and restores checkpoints collectively. On one
process every function here is a no-op or trivially true, so single-host code pays nothing.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from mscm_jax.errors import ConfigError

# Environment variables that say a launcher started this process as one of several;
# jax.distributed.initialize() then finds the coordinator, count and rank by itself.
# SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: only an srun step sets it, so a plain python
# inside a many-task salloc stays one process instead of waiting for peers forever.
_CLUSTER_ENV = {
    "SLURM_STEP_NUM_TASKS": "SLURM (srun)",
    "OMPI_COMM_WORLD_SIZE": "Open MPI (mpirun)",
    "TPU_WORKER_HOSTNAMES": "a TPU pod slice (GKE)",
}


def _launcher() -> str | None:
  """The launcher that started several processes, from the environment, or None."""
  for var, name in _CLUSTER_ENV.items():
    value = os.environ.get(var, "")
    count = len(value.split(",")) if var == "TPU_WORKER_HOSTNAMES" else (
        int(value) if value.isdigit() else 0)
    if count > 1:
      return name
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> bool:
  """Joins the cluster when there is one; True when this is one process of several.

  Explicit arguments (a CPU cluster, the tests) must come all three together; without
  them the environment decides (an srun step, mpirun, a GKE TPU slice), or with `auto`
  JAX's own detection does (a Cloud TPU VM slice, whose workers it finds through the
  metadata server). Must run before anything touches a JAX backend.
  """
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given) and not all(v is not None for v in given):
    raise ConfigError("--coordinator_address, --num_processes and --process_id go together: "
                      "give all three, or none to let the launcher's environment decide")
  if num_processes is not None:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} must lie in [0, --num_processes="
                        f"{num_processes})")
    if num_processes == 1:
      return False
    _cpu_collectives()
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif auto or (launcher := _launcher()) is not None:
    _cpu_collectives()
    logging.info("Joining the JAX cluster of %s", "this launch" if auto else launcher)
    jax.distributed.initialize()
  else:
    return False
  logging.info("Process %d of %d; %d local and %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def _cpu_collectives() -> None:
  # CPU devices of different processes talk through gloo; GPUs and TPUs ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")


def is_writer() -> bool:
  """Process 0 writes the workdir; the others compute alongside it."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Every process waits here for the others (a named barrier): files process 0 wrote
  before it are there for all after it."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any one of them."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def to_host(x: Any) -> np.ndarray:
  """The whole value of a (possibly multi-process) array as NumPy on every process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)
