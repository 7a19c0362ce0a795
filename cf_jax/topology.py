"""Cloud TPU slices this host does not have: compile-only devices and what each chip holds.

    devices = topology.compile_only_devices("v5p:2x4x4")   # 32 chips of a v5p-64 slice
    topology.chip("v5p").hbm_gb                            # 95

A topology is `<generation>:<chips per axis>`, e.g. v5p:2x4x4 (v5p-64: the v5p name counts
TensorCores, two per chip), v6e:16x16 (v6e-256), v6e:1x1. The devices come from libtpu (the
`tpu` extra: `pip install -e .[tpu]`) and only compile: `jax.jit(...).lower(...).compile()`
works against them on a CPU host, running does not.
"""
import dataclasses
import os
import re

import jax

from cf_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Chip:
  device_kind: str  # as jax reports it
  hbm_gb: float  # HBM per chip, 1e9 bytes (bf16 peaks: flops.PEAK_TFLOPS[device_kind])


CHIPS = {
    "v4": Chip("TPU v4", 32.0),
    "v5e": Chip("TPU v5 lite", 16.0),
    "v5p": Chip("TPU v5", 95.0),
    "v6e": Chip("TPU v6 lite", 32.0),
}

_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")

# libtpu looks for a TPU VM's metadata and warns on every start when it finds none, and takes a
# host-wide lock (/tmp/libtpu_lockfile) that fails a second process; compile-only use needs
# neither. Set only for topology look-ups, never for a run on live TPUs.
_COMPILE_ONLY_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5p-8", "TPU_WORKER_HOSTNAMES": "localhost",
                     "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


def parse(name: str) -> tuple[str, tuple[int, ...]]:
  """'v5p:2x4x4' -> ('v5p', (2, 4, 4))."""
  match = _TOPOLOGY.match(name)
  if not match:
    raise UserError(f"topology {name!r}: write <generation>:<chips per axis> with generation one of "
                     f"{sorted(CHIPS)}, e.g. v5p:2x4x4 or v6e:16x16")
  return match[1], tuple(int(n) for n in match[2].split("x"))


def chip(generation: str) -> Chip:
  return CHIPS[generation]


def compile_only_devices(name: str) -> list[jax.Device]:
  """The chips of topology `name`, one device each, for ahead-of-time compilation."""
  generation, _ = parse(name)
  for key, value in _COMPILE_ONLY_ENV.items():
    os.environ.setdefault(key, value)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  try:
    return list(topologies.get_topology_desc(name, platform="tpu").devices)
  except Exception as e:  # libtpu missing or the topology unknown to it
    raise UserError(f"cannot make compile-only devices for {name} ({generation}): {e}; "
                     "install the tpu extra (pip install -e .[tpu])") from e

