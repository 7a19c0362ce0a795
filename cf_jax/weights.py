"""Loading network weights from whatever a user has: a converted orbax checkpoint or PyTorch files.

Each network kind (`wan` DiT, `vae`, `t5`) names its config class, its presets, its PyTorch reader
and how to find the architecture in a `config.json` beside PyTorch weights; `load` serves both
sources, and the convert CLI writes checkpoints that record the kind, the config and (for a
generator) how it samples, so they load without further flags.
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
  load_torch: Callable[..., tuple[dict, dict]]  # (path, config, entry, dtype) -> params, source
  find_config: Callable[[Any], Any]  # path -> the config in a config.json beside the weights, or None

  def preset(self, name: str):
    if name not in self.presets:
      raise UserError(f"unknown {self.name} preset {name!r}; choose one of {sorted(self.presets)}")
    return self.presets[name]()

  def config_from_dict(self, raw: dict):
    return self.config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _no_entry(load):
  """A loader of plain state dicts: `entry` must be None; the source records the file's layout."""

  def load_torch(path, config, entry, dtype):
    if entry is not None:
      raise CheckpointError(f"{path}: --entry applies to Causal/Self Forcing training checkpoints only")
    return load(path, config, dtype)

  return load_torch


def _load_wan_torch(path, config, entry, dtype):
  params, source = convert_wan.load(path, config, entry, dtype)
  return params, dataclasses.asdict(source)


def _load_vae_torch(path, config, dtype):
  state_dict, layout = convert_vae.read_state_dict(path, config)
  return convert_vae.vae_params_from_torch(state_dict, config, f"{path} ({layout} layout)", dtype), {"layout": layout}


def _load_t5_torch(path, config, dtype):
  return convert_t5.load_t5_checkpoint(path, config, None, dtype), {"layout": "wan"}


NETWORKS = {
    "wan": Network("wan_dit", WanConfig, wan_config.PRESETS, _load_wan_torch, convert_wan.find_config),
    "vae": Network("wan_vae", VAEConfig, {"wan21": VAEConfig.wan21, "tiny": VAEConfig.tiny}, _no_entry(_load_vae_torch),
                   convert_vae.find_config),
    "t5": Network("umt5_encoder", t5.T5Config, t5.PRESETS, _no_entry(_load_t5_torch), lambda path: None),
}


def is_params_checkpoint(path: str | pathlib.Path) -> bool:
  """True for a directory written by `checkpoint.save_params` (it has a `model` item); local or
  gs:// paths."""
  path = epath.Path(path)
  return path.is_dir() and (path / "model").is_dir() and (path / "params").is_dir()


def read_info(path: str | pathlib.Path) -> dict[str, Any]:
  """The info a converted or exported checkpoint records (network, config, source, sampling);
  empty for PyTorch weights."""
  return checkpoint.read_model_info(path) if is_params_checkpoint(path) else {}


def load_with_source(kind: str, path: str | pathlib.Path, config=None, entry: str | None = None, dtype=np.float32):
  """(config, params, source) of a network of `kind` ('wan', 'vae' or 't5').

  `path` is a converted checkpoint (its config is read from it; a given `config` must agree), or
  PyTorch weights: for the DiT a `.safetensors` file, sharded index or directory (original or
  diffusers names), a diffusers pipeline root, or a `.pt` training checkpoint with `entry`; for
  the VAE `Wan2.1_VAE.pth` or a `.safetensors`/diffusers `vae/` folder. Without `config`, PyTorch
  weights need a `config.json` beside them. `source` says what was read: for PyTorch weights its
  layout and the `.pt` entry taken, for a converted checkpoint its recorded info.
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
    return saved, jax.tree.map(lambda x: np.asarray(x).astype(dtype, copy=False), params), info
  config = config or network.find_config(path)
  if config is None:
    raise CheckpointError(f"{path} is not a converted checkpoint and has no config.json beside it: name the "
                          f"model preset (--model: {', '.join(network.presets)})")
  return (config, *network.load_torch(path, config, entry, dtype))


def load(kind: str, path: str | pathlib.Path, config=None, entry: str | None = None, dtype=np.float32):
  """(config, params) of a network of `kind`; see `load_with_source`."""
  return load_with_source(kind, path, config, entry, dtype)[:2]


def load_wan(path, config: WanConfig | None = None, entry: str | None = None, dtype=np.float32):
  """(WanConfig, params) of a Wan DiT; see `load_with_source`."""
  return load("wan", path, config, entry, dtype)


def to_device(params: dict, shardings=None) -> dict:
  """Moves host params (nested dicts of arrays) onto the default device, or placed by `shardings`
  (one sharding for every leaf, or a tree of them with the params' keys), in place and leaf by
  leaf: each host array is released as soon as its device copy exists, so the peak is one copy of
  the params and a leaf, where `jax.device_put(params)` holds both trees (on CPU both are host
  memory). Returns `params`, now of device arrays."""
  for key, value in params.items():
    placement = shardings[key] if isinstance(shardings, dict) else shardings
    params[key] = to_device(value, placement) if isinstance(value, dict) else jax.device_put(value, placement)
  return params
