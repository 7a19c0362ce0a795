"""The multi-host flags every distributed CLI shares, and starting JAX's distributed runtime.

On Cloud TPU `jax.distributed.initialize()` finds its peers itself; GPU clusters give the
coordinator's address, the process count and this process's index.
"""
from absl import flags
import jax

_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (several hosts).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (GPU clusters).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (GPU clusters).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (GPU clusters).")


def initialize() -> None:
  """Starts the distributed runtime when --multihost is given; a no-op otherwise."""
  if _MULTIHOST.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
