"""Orbax checkpoints of model parameters (converted weights, exported generators).

A params checkpoint is a directory with two items: `params` (the Flax tree, one array file set per
leaf) and `model` (JSON: which network and its config), so a reader knows what it holds. Restoring
takes an optional tree of target shardings: a checkpoint written on one mesh restores onto any
other, or onto a single CPU.
"""
import dataclasses
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from etils import epath
import orbax.checkpoint as ocp

from cf_jax.convert.errors import CheckpointError
from cf_jax.errors import UserError


def save_params(path: str | pathlib.Path, params: Any, model_info: dict[str, Any], overwrite: bool = False) -> None:
  """Writes `params` and `model_info` to `path` (a local or gs:// directory).

  Orbax writes into a temporary directory and renames it when complete, so an interrupted save
  leaves no half-written checkpoint under `path`.
  """
  path = as_epath(path)
  if path.exists() and not overwrite:
    raise CheckpointError(f"{path} already exists; choose another --out or pass --overwrite")
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(
        path,
        ocp.args.Composite(params=ocp.args.StandardSave(params), model=ocp.args.JsonSave(model_info)),
        force=overwrite,
    )


def read_model_info(path: str | pathlib.Path) -> dict[str, Any]:
  """The `model` JSON item of a params checkpoint."""
  path = _existing(path)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    return ckptr.restore(path, ocp.args.Composite(model=ocp.args.JsonRestore()))["model"]


def restore_params(path: str | pathlib.Path, target: Any | None = None) -> Any:
  """Reads the `params` item.

  Args:
    path: checkpoint directory written by `save_params`.
    target: optional tree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays giving the
      expected structure, dtypes and placement; without it, numpy arrays on the host, whatever
      mesh wrote them (orbax would otherwise place them on the writer's devices and fail on
      any other topology: a generator exported on a pod, sampled on one GPU).
  """
  path = _existing(path)
  try:
    if target is None:
      with ocp.StandardCheckpointer() as reader:
        saved = reader.metadata(path / "params").item_metadata
      host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
      args = ocp.args.PyTreeRestore(restore_args=host)
    else:
      args = ocp.args.StandardRestore(target)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
      return ckptr.restore(path, ocp.args.Composite(params=args))["params"]
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{path}: params do not match the expected model: {str(e).splitlines()[0]}") from None


def abstract_like(params: Any, shardings: Any | None = None) -> Any:
  """ShapeDtypeStructs for `params`, optionally with target shardings, for `restore_params`."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), params, shardings)


def config_dict(config: Any) -> dict[str, Any]:
  """A dataclass config as JSON-ready data (tuples become lists)."""
  return dataclasses.asdict(config)


def as_epath(path) -> epath.Path:
  """A local or gs:// path as orbax wants it: local paths made absolute."""
  return epath.Path(path if "://" in str(path) else pathlib.Path(path).absolute())


def check_writable(directory: str | pathlib.Path, flag: str = "--workdir") -> None:
  """Raises UserError unless files can be made in `directory` or, if it does not exist yet, in its
  nearest existing parent (where it would be created). Creates nothing; gs:// is not probed."""
  if "://" in str(directory):
    return
  existing = _nearest_existing(directory)
  try:
    if not existing.is_dir():
      raise NotADirectoryError(20, f"{existing} is a file")
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as e:
    raise UserError(f"{flag} {directory} is not writable ({e.strerror or e}); choose another {flag}") from None


def check_free_space(directory: str | pathlib.Path, nbytes: int, what: str, flag: str = "--workdir") -> None:
  """Raises UserError when the disk of `directory` has less than `nbytes` free, so that a save never
  starts that cannot finish (orbax would leave its temporary directory behind)."""
  if "://" in str(directory):
    return
  free = shutil.disk_usage(_nearest_existing(directory)).free
  if free < nbytes:
    raise UserError(f"{flag} {directory} has {free / 2**30:.2f} GiB free; {what} needs {nbytes / 2**30:.2f} GiB: "
                    f"free some space or choose another {flag}")


def _nearest_existing(path) -> pathlib.Path:
  """`path`, or the parent it would be created in."""
  path = pathlib.Path(path)
  while not path.exists():
    path = path.parent
  return path


def _existing(path):
  path = as_epath(path)
  if not path.exists():
    raise CheckpointError(f"{path} does not exist; convert weights first with python -m cf_jax.convert")
  return path
