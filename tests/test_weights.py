"""Moving loaded params onto the device, or onto a mesh, without holding two copies."""
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cf_jax import weights


def test_to_device_replaces_the_host_arrays_in_place():
  """In place at every level, so no tree keeps the host arrays alive beside their device copies
  (what JAX holds meanwhile, a pending copy or an aliased buffer, is its own business)."""
  blocks = {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3)}
  host = {"blocks": blocks, "head": np.ones(4, np.float32)}
  expected = jax.tree.map(np.copy, host)
  moved = weights.to_device(host)
  assert moved is host and moved["blocks"] is blocks
  assert all(isinstance(x, jax.Array) for x in (blocks["kernel"], host["head"]))
  jax.tree.map(np.testing.assert_array_equal, moved, expected)


def test_to_device_places_each_leaf_by_its_sharding():
  mesh = jax.make_mesh((8,), ("fsdp",))
  shardings = {"blocks": {"kernel": NamedSharding(mesh, P("fsdp", None))}, "head": NamedSharding(mesh, P())}
  host = {"blocks": {"kernel": np.arange(16.0, dtype=np.float32).reshape(8, 2)}, "head": np.ones(4, np.float32)}
  expected = jax.tree.map(np.copy, host)
  moved = weights.to_device(host, shardings)
  assert moved["blocks"]["kernel"].sharding == shardings["blocks"]["kernel"]
  assert moved["head"].sharding == shardings["head"]
  jax.tree.map(np.testing.assert_array_equal, moved, expected)


def test_to_device_places_every_leaf_by_one_sharding():
  replicated = NamedSharding(jax.make_mesh((8,), ("data",)), P())
  moved = weights.to_device({"blocks": {"kernel": np.ones((2, 3), np.float32)}, "head": np.zeros(4, np.float32)},
                            replicated)
  assert all(x.sharding == replicated for x in jax.tree.leaves(moved))
