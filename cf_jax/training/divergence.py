"""Divergence: an update whose loss, gradient norm or resulting state is not finite.

`guard` wraps an update inside its jit: it adds a `finite` flag to the metrics and, when skipping
is on, keeps the old state where the flag is false (a select on device; nothing leaves it). The
host-side `Monitor` reads the flags only where the trainer syncs anyway (logging, saving), so
the loop keeps dispatching ahead; by default the first bad flag stops the run before anything is
saved, so no checkpoint or export ever holds NaN.
"""
import collections

import jax
import jax.numpy as jnp

from cf_jax import errors
from cf_jax.training.stage import UpdateFn

FLAG = "finite"


class Diverged(errors.UserError):
  """A non-finite update; the CLI prints it as one line and exits non-zero."""


def all_finite(tree) -> jax.Array:
  """[] bool: every float of `tree` is finite."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def guard(update: UpdateFn, skip: bool) -> UpdateFn:
  """`update` whose metrics gain FLAG (loss, grad norm and new state finite); with `skip`, a
  non-finite update returns the state it was given."""

  def guarded(state, frozen, batch):
    new, metrics = update(state, frozen, batch)
    finite = all_finite((metrics, new))
    if skip:
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return new, {**metrics, FLAG: finite}

  return guarded


class Monitor:
  """Collects the FLAG of every update and checks them in batches."""

  def __init__(self, skip: bool, names: tuple[str, ...]):
    self._skip = skip
    self._names = names
    self._pending = []  # (step, update name, metrics with FLAG), not yet read back
    self._skipped = collections.Counter()

  def add(self, step: int, name: str, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Records one update's metrics (at iteration `step`, 1-based); returns them without FLAG."""
    self._pending.append((step, name, metrics))
    return {k: v for k, v in metrics.items() if k != FLAG}

  def check(self) -> None:
    """Raises Diverged at the first non-finite update since the last check (counts it when
    skipping)."""
    pending, self._pending = self._pending, []
    for step, name, metrics in jax.device_get(pending):
      if metrics[FLAG]:
        continue
      if self._skip:
        self._skipped[name] += 1
        continue
      values = ", ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k != FLAG)
      raise Diverged(f"step {step}: the {name} update is not finite ({values}); stopped before saving, "
                     f"the last checkpoint is the last finite state. Lower the learning rate, or set "
                     f"--config.skip_nonfinite_updates=true to skip such updates")

  def skipped(self) -> dict[str, float]:
    """`<update>/skipped_updates`: updates skipped since the last call (one logging interval);
    empty when skipping is off."""
    counts = {f"{name}/skipped_updates": float(self._skipped[name]) for name in self._names} if self._skip else {}
    self._skipped.clear()
    return counts
