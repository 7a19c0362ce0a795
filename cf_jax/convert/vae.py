"""PyTorch Wan VAE state dicts (`Wan2.1_VAE.pth`) -> Flax params of `cf_jax.models.vae.WanVAE`.

One table (`_entries`) lists every reference tensor with its place in the Flax tree, its layout
and its shape; it is built from the same layer lists as the model, so the two cannot drift apart.
Reference names: architecture.md §8.5 (e.g. `decoder.upsamples.3.time_conv.weight`).
"""
import pathlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from cf_jax.convert import torch_pickle
from cf_jax.convert.errors import CheckpointError
from cf_jax.convert.key_check import check_state_dict
from cf_jax.convert.key_map import Entry, set_path
from cf_jax.models.vae import Layer, VAEConfig, decoder_layers, encoder_layers

Kind = Literal["conv3d", "conv2d", "gamma", "bias"]


def _conv3d(torch_prefix, flax_path, dim_in, dim_out, kernel=(3, 3, 3)):
  return [
      Entry(f"{torch_prefix}.weight", (*flax_path, "kernel"), "conv3d", (dim_out, dim_in, *kernel)),
      Entry(f"{torch_prefix}.bias", (*flax_path, "bias"), "bias", (dim_out,)),
  ]


def _conv2d(torch_prefix, flax_path, dim_in, dim_out, kernel):
  return [
      Entry(f"{torch_prefix}.weight", (*flax_path, "kernel"), "conv2d", (dim_out, dim_in, kernel, kernel)),
      Entry(f"{torch_prefix}.bias", (*flax_path, "bias"), "bias", (dim_out,)),
  ]


def _gamma(torch_name, flax_path, dim, images=False):
  return [Entry(torch_name, (*flax_path, "gamma"), "gamma", (dim, 1, 1) if images else (dim, 1, 1, 1))]


def _residual(torch_prefix, flax_path, dim_in, dim_out):
  out = [
      *_gamma(f"{torch_prefix}.residual.0.gamma", (*flax_path, "norm1"), dim_in),
      *_conv3d(f"{torch_prefix}.residual.2", (*flax_path, "conv1"), dim_in, dim_out),
      *_gamma(f"{torch_prefix}.residual.3.gamma", (*flax_path, "norm2"), dim_out),
      *_conv3d(f"{torch_prefix}.residual.6", (*flax_path, "conv2"), dim_out, dim_out),
  ]
  if dim_in != dim_out:
    out += _conv3d(f"{torch_prefix}.shortcut", (*flax_path, "shortcut"), dim_in, dim_out, (1, 1, 1))
  return out


def _layer(torch_prefix, flax_path, layer: Layer):
  if layer.kind == "residual":
    return _residual(torch_prefix, flax_path, layer.dim_in, layer.dim_out)
  out = _conv2d(f"{torch_prefix}.resample.1", (*flax_path, "resample"), layer.dim_in, layer.dim_out, 3)
  if layer.kind == "downsample3d":
    out += _conv3d(f"{torch_prefix}.time_conv", (*flax_path, "time_conv"), layer.dim_in, layer.dim_in, (3, 1, 1))
  if layer.kind == "upsample3d":
    out += _conv3d(f"{torch_prefix}.time_conv", (*flax_path, "time_conv"), layer.dim_in, 2 * layer.dim_in, (3, 1, 1))
  return out


def _middle(torch_prefix, flax_path, dim):
  return [
      *_residual(f"{torch_prefix}.middle.0", (*flax_path, "middle_0"), dim, dim),
      *_gamma(f"{torch_prefix}.middle.1.norm.gamma", (*flax_path, "middle_1", "norm"), dim, images=True),
      *_conv2d(f"{torch_prefix}.middle.1.to_qkv", (*flax_path, "middle_1", "to_qkv"), dim, 3 * dim, 1),
      *_conv2d(f"{torch_prefix}.middle.1.proj", (*flax_path, "middle_1", "proj"), dim, dim, 1),
      *_residual(f"{torch_prefix}.middle.2", (*flax_path, "middle_2"), dim, dim),
  ]


def _head(torch_prefix, flax_path, dim, dim_out):
  return [
      *_gamma(f"{torch_prefix}.head.0.gamma", (*flax_path, "head_norm"), dim),
      *_conv3d(f"{torch_prefix}.head.2", (*flax_path, "head_conv"), dim, dim_out),
  ]


def _entries(cfg: VAEConfig) -> list[Entry]:
  z = cfg.z_dim
  enc, dec = encoder_layers(cfg), decoder_layers(cfg)
  out = _conv3d("encoder.conv1", ("encoder", "conv1"), 3, cfg.dim)
  for j, layer in enumerate(enc):
    out += _layer(f"encoder.downsamples.{j}", ("encoder", f"downsamples_{j}"), layer)
  out += _middle("encoder", ("encoder",), enc[-1].dim_out)
  out += _head("encoder", ("encoder",), enc[-1].dim_out, 2 * z)
  out += _conv3d("conv1", ("conv1",), 2 * z, 2 * z, (1, 1, 1))
  out += _conv3d("conv2", ("conv2",), z, z, (1, 1, 1))
  out += _conv3d("decoder.conv1", ("decoder", "conv1"), z, dec[0].dim_in)
  out += _middle("decoder", ("decoder",), dec[0].dim_in)
  for j, layer in enumerate(dec):
    out += _layer(f"decoder.upsamples.{j}", ("decoder", f"upsamples_{j}"), layer)
  out += _head("decoder", ("decoder",), dec[-1].dim_out, 3)
  return out


def expected_torch_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
  """Every reference parameter name with its shape (194 tensors for Wan2.1)."""
  return {e.torch_name: e.torch_shape for e in _entries(cfg)}


def _to_flax(kind: Kind, w: np.ndarray) -> np.ndarray:
  if kind == "conv3d":  # [O, I, T, H, W] -> [T, H, W, I, O]
    return w.transpose(2, 3, 4, 1, 0)
  if kind == "conv2d":  # [O, I, H, W] -> [H, W, I, O]
    return w.transpose(2, 3, 1, 0)
  if kind == "gamma":  # [C, 1, 1(, 1)] -> [C]
    return w.reshape(-1)
  return w


def vae_params_from_torch(
    state_dict: Mapping[str, np.ndarray], config: VAEConfig, source: str = "VAE state dict", dtype=np.float32
) -> dict:
  """Reference names and layouts -> the Flax param tree of `WanVAE(config)`. Strict."""
  check_state_dict(state_dict, expected_torch_shapes(config), source)
  params: dict = {}
  for e in _entries(config):
    w = np.ascontiguousarray(_to_flax(e.kind, np.asarray(state_dict[e.torch_name]))).astype(dtype)
    set_path(params, e.flax_path, w)
  return params


def load_vae_checkpoint(path: str | pathlib.Path, config: VAEConfig, dtype=np.float32) -> dict:
  """Flax params of `WanVAE(config)` from a reference `.pth` state dict (e.g. `Wan2.1_VAE.pth`)."""
  state_dict = torch_pickle.load_torch_file(path)
  if not isinstance(state_dict, Mapping):
    raise CheckpointError(f"{path}: expected a state dict at the top level, found {type(state_dict).__name__}")
  return vae_params_from_torch(state_dict, config, str(path), dtype)
