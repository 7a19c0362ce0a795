"""Moving loaded params onto the device without holding two copies."""
import gc
import weakref

import jax
import numpy as np

from cf_jax import weights


def test_to_device_moves_in_place_and_releases_each_host_array():
  host = {"blocks": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3)}, "head": np.ones(4, np.float32)}
  expected = jax.tree.map(np.copy, host)
  released = [weakref.ref(x) for x in jax.tree.leaves(host)]
  moved = weights.to_device(host)
  assert moved is host
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(moved))
  gc.collect()
  assert [r() for r in released] == [None, None]  # nothing holds the host arrays any more
  jax.tree.map(np.testing.assert_array_equal, moved, expected)
