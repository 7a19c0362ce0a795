"""Device mesh, logical-axis rules and sharding helpers.

Every parameter and large activation carries logical axis names (`embed`, `heads`, `mlp`, ...);
one table of rules maps them to the mesh axes `data`, `fsdp` and `tensor`. Nothing else in the
project names a mesh axis, so changing the parallelism is changing the rules or the mesh shape.
"""
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cf_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# (logical name, mesh axes). FSDP shards the model width of every weight; tensor parallelism
# splits heads and MLP width; the batch is split over data and fsdp.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("layers", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed_out", "tensor"),
    ("modulation", "tensor"),
    ("vocab", "tensor"),
    ("patch", None),
    ("patch_out", None),
    ("freq", None),
    ("text_embed", None),
    ("relpos_buckets", None),
    ("length", None),
    ("text_length", None),
    ("act_embed", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (default: all); -1 takes the remaining devices.

  On a TPU torus a mesh axis may span part of a physical axis (tensor=4 on a 16x16 v6e slice),
  so that head counts that do not divide a torus side (12, 40) still get tensor parallelism.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = [data, fsdp, tensor]
  if shape.count(-1) > 1:
    raise UserError(f"mesh shape {shape}: at most one axis may be -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise UserError(f"{len(devices)} devices do not split over mesh shape {shape}")
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise UserError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, {len(devices)} available")
  grid = mesh_utils.create_device_mesh(tuple(shape), devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def target_platform() -> str:
  """The platform a program being traced is for: that of the mesh it is traced under
  (compile-only TPU devices on a CPU host are a TPU target), else the default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device.platform if device is not None else jax.default_backend()


def logical_to_sharding(logical_specs, mesh: Mesh, rules=DEFAULT_RULES):
  """Tree of logical `PartitionSpec`s -> tree of `NamedSharding`s on `mesh`."""
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  return jax.tree.map(
      lambda spec: NamedSharding(mesh, spec), mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
  )


def param_shardings(boxed_params, mesh: Mesh, rules=DEFAULT_RULES):
  """Shardings of a parameter tree as returned by `Module.init` (or `jax.eval_shape` of it),
  whose leaves are boxed with their logical axis names."""
  return logical_to_sharding(nn.get_partition_spec(boxed_params), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of an input whose leading axis is the batch and whose other axes are replicated."""
  return logical_to_sharding(PartitionSpec("batch", *([None] * (ndim - 1))), mesh, rules)
