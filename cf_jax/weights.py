"""Loading Wan DiT weights from whatever a user has: a converted orbax checkpoint or PyTorch files."""
import pathlib

import jax
import numpy as np

from cf_jax import checkpoint
from cf_jax.convert import wan as convert_wan
from cf_jax.convert.errors import CheckpointError
from cf_jax.models.config import WanConfig

WAN_NETWORK = "wan_dit"


def is_params_checkpoint(path: str | pathlib.Path) -> bool:
  """True for a directory written by `checkpoint.save_params` (it has a `model` item)."""
  path = pathlib.Path(path)
  return path.is_dir() and (path / "model").is_dir() and (path / "params").is_dir()


def load_wan(
    path: str | pathlib.Path,
    config: WanConfig | None = None,
    entry: str | None = None,
    dtype=np.float32,
) -> tuple[WanConfig, dict]:
  """(config, params) of a Wan DiT.

  `path` is a converted checkpoint (its config is read from it; a given `config` must agree), or
  reference weights (`.safetensors`, sharded index, or a `.pt` training checkpoint with `entry`),
  which need `config`.
  """
  if is_params_checkpoint(path):
    info = checkpoint.read_model_info(path)
    if info.get("network") != WAN_NETWORK:
      raise CheckpointError(f"{path} holds a {info.get('network')!r} network, not a Wan DiT")
    saved = info["config"]
    saved_config = WanConfig(**{**saved, "patch_size": tuple(saved["patch_size"])})
    if config is not None and config != saved_config:
      raise CheckpointError(f"{path} was converted for {saved_config}, not the requested {config}")
    params = checkpoint.restore_params(path)
    return saved_config, jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
  if config is None:
    raise CheckpointError(f"{path} is not a converted checkpoint: name the model config (e.g. --model t2v_1_3b)")
  return config, convert_wan.load_params(path, config, entry, dtype)

