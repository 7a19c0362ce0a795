"""Loading network weights from whatever a user has: a converted orbax checkpoint or PyTorch files.

Each network kind (`wan` DiT, `vae`) names its config class, its presets and its PyTorch
reader; `load` serves both sources, and the convert CLI writes checkpoints that record the kind
and config so they load without further flags.
"""
import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from etils import epath

from cf_jax import checkpoint
from cf_jax.convert import t5 as convert_t5
from cf_jax.convert import vae as convert_vae
from cf_jax.convert import wan as convert_wan
from cf_jax.convert.errors import CheckpointError
from cf_jax.errors import UserError
from cf_jax.models import config as wan_config
from cf_jax.models import t5
from cf_jax.models.config import WanConfig
from cf_jax.models.vae import VAEConfig


@dataclasses.dataclass(frozen=True)
class Network:
  name: str  # recorded in converted checkpoints
  config_class: type
  presets: dict[str, Callable[[], Any]]
  load_torch: Callable[..., dict]  # (path, config, entry, dtype) -> params

  def preset(self, name: str):
    if name not in self.presets:
      raise UserError(f"unknown {self.name} preset {name!r}; choose one of {sorted(self.presets)}")
    return self.presets[name]()

  def config_from_dict(self, raw: dict):
    return self.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _load_vae_torch(path, config, entry, dtype):
  if entry is not None:
    raise CheckpointError(f"{path}: --entry applies to Causal/Self Forcing training checkpoints only")
  return convert_vae.load_vae_checkpoint(path, config, dtype)


NETWORKS = {
    "wan": Network("wan_dit", WanConfig, wan_config.PRESETS, convert_wan.load_params),
    "vae": Network("wan_vae", VAEConfig, {"wan21": VAEConfig.wan21, "tiny": VAEConfig.tiny}, _load_vae_torch),
    "t5": Network("umt5_encoder", t5.T5Config, t5.PRESETS, convert_t5.load_t5_checkpoint),
}


def is_params_checkpoint(path: str | pathlib.Path) -> bool:
  """True for a directory written by `checkpoint.save_params` (it has a `model` item); local or
  gs:// paths."""
  path = epath.Path(path)
  return path.is_dir() and (path / "model").is_dir() and (path / "params").is_dir()


def load(kind: str, path: str | pathlib.Path, config=None, entry: str | None = None, dtype=np.float32):
  """(config, params) of a network of `kind` ('wan', 'vae' or 't5').

  `path` is a converted checkpoint (its config is read from it; a given `config` must agree), or
  PyTorch weights, which need `config`: for the DiT a `.safetensors` file, sharded index or
  directory, or a `.pt` training checkpoint with `entry`; for the VAE `Wan2.1_VAE.pth`.
  """
  network = NETWORKS[kind]
  if is_params_checkpoint(path):
    info = checkpoint.read_model_info(path)
    if info.get("network") != network.name:
      raise CheckpointError(f"{path} holds a {info.get('network')!r} network, not {network.name!r}")
    saved = network.config_from_dict(info["config"])
    if config is not None and config != saved:
      raise CheckpointError(f"{path} was converted for {saved}, not the requested {config}")
    params = checkpoint.restore_params(path)
    return saved, jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
  if config is None:
    raise CheckpointError(f"{path} is not a converted checkpoint: name the model preset "
                          f"({', '.join(network.presets)})")
  return config, network.load_torch(path, config, entry, dtype)


def load_wan(path, config: WanConfig | None = None, entry: str | None = None, dtype=np.float32):
  """(WanConfig, params) of a Wan DiT; see `load`."""
  return load("wan", path, config, entry, dtype)
