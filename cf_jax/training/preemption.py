"""Stopping cleanly on SIGTERM (a TPU preemption, Slurm) and SIGINT (Ctrl-C).

While a `Signals` block is open the two signals only set a flag; the loop that owns the block
finishes its unit of work (a training iteration, a dataset shard), saves, and raises `Preempted`,
which the CLIs turn into exit status 0 and a line saying how to resume.

The trainer needs every host to stop at the same step. On one process the flag is that step. On
several, JAX's preemption service (started by `jax.distributed.initialize`) catches SIGTERM
itself and agrees on a step through the coordinator (`multihost_utils.reached_preemption_sync_point`,
as orbax does); SIGINT is forwarded to it as SIGTERM. Without that service the hosts all-gather
their flags every iteration.
"""
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils
import numpy as np

from cf_jax import errors

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(errors.Stopped):
  """The work stopped on a signal after saving its progress; running the same command resumes."""


def _sync_service() -> bool:
  """Whether JAX's distributed preemption service is running (several processes)."""
  return jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service


class Signals:
  """`with Signals(synced) as signals:` SIGTERM/SIGINT set `signals.requested` instead of killing.

  synced: the hosts must agree on the step (`reached`); then, with JAX's preemption service
  running, SIGTERM is left to it. Off the main thread (where Python cannot take signals) nothing
  is installed.
  """

  def __init__(self, synced: bool = False):
    self._synced = synced
    self._previous = {}
    self.requested: signal.Signals | None = None

  def _set(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum)

  def _forward(self, signum, frame):
    del signum, frame
    os.kill(os.getpid(), signal.SIGTERM)

  def __enter__(self) -> "Signals":
    if threading.current_thread() is not threading.main_thread():
      return self
    service = self._synced and _sync_service()
    handlers = {signal.SIGINT: self._forward} if service else dict.fromkeys(_SIGNALS, self._set)
    for sig, handler in handlers.items():
      self._previous[sig] = signal.signal(sig, handler)
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      # None: the previous handler was not set from Python (e.g. JAX's); the default is the
      # nearest we can restore.
      signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def reached(self, step: int) -> bool:
    """Whether to stop after `step`: the same answer on every host. Called at every step."""
    if jax.process_count() == 1:
      return self.requested is not None
    if _sync_service():
      return multihost_utils.reached_preemption_sync_point(step)
    flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
    return bool(np.any(flags))
