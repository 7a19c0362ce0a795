"""safetensors files, single or sharded (`*.safetensors.index.json`), to and from numpy."""
import json
import os
import pathlib
import shutil

import numpy as np
import safetensors
import safetensors.numpy

from cf_jax.convert.errors import CheckpointError


def _resolve(path: pathlib.Path) -> pathlib.Path:
  """A directory stands for the index json in it, else its single .safetensors file."""
  if not path.exists():
    raise CheckpointError(f"{path} does not exist")
  if not path.is_dir():
    return path
  indices = sorted(path.glob("*.safetensors.index.json"))
  files = sorted(path.glob("*.safetensors"))
  if len(indices) == 1:
    return indices[0]
  if not indices and len(files) == 1:
    return files[0]
  raise CheckpointError(f"{path} holds {len(indices)} index files and {len(files)} .safetensors files; "
                        "pass the file to convert")


def _load_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  if not path.is_file():
    raise CheckpointError(f"{path} does not exist")
  try:
    return safetensors.numpy.load_file(str(path))
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file, a sharded checkpoint's index json, or a directory."""
  path = _resolve(pathlib.Path(path))
  if not path.name.endswith(".json"):
    return _load_file(path)
  try:
    weight_map = json.loads(path.read_text())["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path} is not a safetensors index (no valid weight_map: {e})") from None
  tensors: dict[str, np.ndarray] = {}
  for shard in sorted(set(weight_map.values())):
    for name, value in _load_file(path.parent / shard).items():
      if name in tensors:
        raise CheckpointError(f"{path}: tensor {name} appears in more than one shard")
      tensors[name] = value
  missing = sorted(set(weight_map) - set(tensors))
  if missing:
    raise CheckpointError(f"{path}: the index lists tensors no shard holds: {missing[:5]}")
  return tensors


def save_safetensors(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
  """Writes to a temporary file beside `path` and renames it, so no partial file is left behind."""
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def save_diffusers_folder(tensors: dict[str, np.ndarray], config: dict, out: str | os.PathLike) -> None:
  """A diffusers model folder (`config.json`, `diffusion_pytorch_model.safetensors`) at `out`, which
  must not exist: written beside it and renamed when complete, so no partial folder is left."""
  out = pathlib.Path(out)
  tmp = out.with_name(f".{out.name}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_safetensors(tensors, tmp / DIFFUSERS_WEIGHTS, metadata={"format": "pt"})
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
