"""PyTorch Wan VAE state dicts (`Wan2.1_VAE.pth`, diffusers `AutoencoderKLWan`) <-> Flax params of
`cf_jax.models.vae.WanVAE`.

One table (`_entries`) lists every reference tensor with its place in the Flax tree, its layout,
its shape and its diffusers (`AutoencoderKLWan`) name; it is built from the same layer lists as the
model, so the two cannot drift apart.
Reference names: architecture.md §8.5 (e.g. `decoder.upsamples.3.time_conv.weight`).
"""
import json
import pathlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from cf_jax.convert import paths
from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert.errors import CheckpointError
from cf_jax.convert.key_check import check_state_dict, naming_of, to_diffusers_names, to_reference_names
from cf_jax.convert.key_map import Entry, get_path, set_path
from cf_jax.models.config import DIFFUSERS_VERSION
from cf_jax.models.vae import LATENT_MEAN, LATENT_STD, Layer, VAEConfig, decoder_layers, encoder_layers

Kind = Literal["conv3d", "conv2d", "gamma", "bias"]

DIFFUSERS_CLASS = "AutoencoderKLWan"


def _conv3d(torch_prefix, diffusers_prefix, flax_path, dim_in, dim_out, kernel=(3, 3, 3)):
  return [
      Entry(f"{torch_prefix}.weight", (*flax_path, "kernel"), "conv3d", (dim_out, dim_in, *kernel),
            f"{diffusers_prefix}.weight"),
      Entry(f"{torch_prefix}.bias", (*flax_path, "bias"), "bias", (dim_out,), f"{diffusers_prefix}.bias"),
  ]


def _conv2d(torch_prefix, diffusers_prefix, flax_path, dim_in, dim_out, kernel):
  return [
      Entry(f"{torch_prefix}.weight", (*flax_path, "kernel"), "conv2d", (dim_out, dim_in, kernel, kernel),
            f"{diffusers_prefix}.weight"),
      Entry(f"{torch_prefix}.bias", (*flax_path, "bias"), "bias", (dim_out,), f"{diffusers_prefix}.bias"),
  ]


def _gamma(torch_name, diffusers_name, flax_path, dim, images=False):
  return [Entry(torch_name, (*flax_path, "gamma"), "gamma", (dim, 1, 1) if images else (dim, 1, 1, 1), diffusers_name)]


def _residual(torch_prefix, diffusers_prefix, flax_path, dim_in, dim_out):
  t, d = torch_prefix, diffusers_prefix
  out = [
      *_gamma(f"{t}.residual.0.gamma", f"{d}.norm1.gamma", (*flax_path, "norm1"), dim_in),
      *_conv3d(f"{t}.residual.2", f"{d}.conv1", (*flax_path, "conv1"), dim_in, dim_out),
      *_gamma(f"{t}.residual.3.gamma", f"{d}.norm2.gamma", (*flax_path, "norm2"), dim_out),
      *_conv3d(f"{t}.residual.6", f"{d}.conv2", (*flax_path, "conv2"), dim_out, dim_out),
  ]
  if dim_in != dim_out:
    out += _conv3d(f"{t}.shortcut", f"{d}.conv_shortcut", (*flax_path, "shortcut"), dim_in, dim_out, (1, 1, 1))
  return out


def _layer(torch_prefix, diffusers_prefix, flax_path, layer: Layer):
  t, d = torch_prefix, diffusers_prefix
  if layer.kind == "residual":
    return _residual(t, d, flax_path, layer.dim_in, layer.dim_out)
  out = _conv2d(f"{t}.resample.1", f"{d}.resample.1", (*flax_path, "resample"), layer.dim_in, layer.dim_out, 3)
  if layer.kind == "downsample3d":
    out += _conv3d(f"{t}.time_conv", f"{d}.time_conv", (*flax_path, "time_conv"), layer.dim_in, layer.dim_in, (3, 1, 1))
  if layer.kind == "upsample3d":
    out += _conv3d(f"{t}.time_conv", f"{d}.time_conv", (*flax_path, "time_conv"), layer.dim_in, 2 * layer.dim_in,
                   (3, 1, 1))
  return out


def _middle(torch_prefix, diffusers_prefix, flax_path, dim):
  t, d = torch_prefix, f"{diffusers_prefix}.mid_block"
  return [
      *_residual(f"{t}.middle.0", f"{d}.resnets.0", (*flax_path, "middle_0"), dim, dim),
      *_gamma(f"{t}.middle.1.norm.gamma", f"{d}.attentions.0.norm.gamma", (*flax_path, "middle_1", "norm"), dim,
              images=True),
      *_conv2d(f"{t}.middle.1.to_qkv", f"{d}.attentions.0.to_qkv", (*flax_path, "middle_1", "to_qkv"), dim, 3 * dim, 1),
      *_conv2d(f"{t}.middle.1.proj", f"{d}.attentions.0.proj", (*flax_path, "middle_1", "proj"), dim, dim, 1),
      *_residual(f"{t}.middle.2", f"{d}.resnets.1", (*flax_path, "middle_2"), dim, dim),
  ]


def _head(prefix, flax_path, dim, dim_out):
  return [
      *_gamma(f"{prefix}.head.0.gamma", f"{prefix}.norm_out.gamma", (*flax_path, "head_norm"), dim),
      *_conv3d(f"{prefix}.head.2", f"{prefix}.conv_out", (*flax_path, "head_conv"), dim, dim_out),
  ]


def _decoder_diffusers_prefixes(layers: list[Layer]) -> list[str]:
  """Diffusers groups the decoder's flat `upsamples` into up blocks: `up_blocks.<i>.resnets.<k>`,
  closed by its upsampler `up_blocks.<i>.upsamplers.0`."""
  prefixes, block, resnet = [], 0, 0
  for layer in layers:
    if layer.kind == "residual":
      prefixes.append(f"decoder.up_blocks.{block}.resnets.{resnet}")
      resnet += 1
    else:
      prefixes.append(f"decoder.up_blocks.{block}.upsamplers.0")
      block, resnet = block + 1, 0
  return prefixes


def _entries(cfg: VAEConfig) -> list[Entry]:
  z = cfg.z_dim
  enc, dec = encoder_layers(cfg), decoder_layers(cfg)
  out = _conv3d("encoder.conv1", "encoder.conv_in", ("encoder", "conv1"), 3, cfg.dim)
  for j, layer in enumerate(enc):  # diffusers keeps the encoder's flat list
    out += _layer(f"encoder.downsamples.{j}", f"encoder.down_blocks.{j}", ("encoder", f"downsamples_{j}"), layer)
  out += _middle("encoder", "encoder", ("encoder",), enc[-1].dim_out)
  out += _head("encoder", ("encoder",), enc[-1].dim_out, 2 * z)
  out += _conv3d("conv1", "quant_conv", ("conv1",), 2 * z, 2 * z, (1, 1, 1))
  out += _conv3d("conv2", "post_quant_conv", ("conv2",), z, z, (1, 1, 1))
  out += _conv3d("decoder.conv1", "decoder.conv_in", ("decoder", "conv1"), z, dec[0].dim_in)
  out += _middle("decoder", "decoder", ("decoder",), dec[0].dim_in)
  for j, (layer, prefix) in enumerate(zip(dec, _decoder_diffusers_prefixes(dec))):
    out += _layer(f"decoder.upsamples.{j}", prefix, ("decoder", f"upsamples_{j}"), layer)
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


def _to_torch(kind: Kind, w: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
  if kind == "conv3d":  # [T, H, W, I, O] -> [O, I, T, H, W]
    return w.transpose(4, 3, 0, 1, 2)
  if kind == "conv2d":  # [H, W, I, O] -> [O, I, H, W]
    return w.transpose(3, 2, 0, 1)
  return w.reshape(torch_shape)


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


def vae_params_to_torch(params: Mapping, config: VAEConfig, dtype=np.float32) -> dict[str, np.ndarray]:
  """Flax params of `WanVAE(config)` -> reference names and layouts (`Wan2.1_VAE.pth` names)."""
  out = {}
  for e in _entries(config):
    try:
      w = np.asarray(get_path(params, e.flax_path))
    except (KeyError, TypeError):
      raise CheckpointError(f"params have no {'/'.join(e.flax_path)} (needed for {e.torch_name}); are they "
                            "WanVAE params of this config?") from None
    out[e.torch_name] = np.ascontiguousarray(_to_torch(e.kind, w, e.torch_shape)).astype(dtype)
  return out


def diffusers_config(config: VAEConfig) -> dict:
  """The `vae/config.json` diffusers writes for this architecture."""
  return {
      "_class_name": DIFFUSERS_CLASS, "_diffusers_version": DIFFUSERS_VERSION, "attn_scales": [],
      "base_dim": config.dim, "dim_mult": list(config.dim_mult), "dropout": 0.0,
      "latents_mean": [float(x) for x in LATENT_MEAN], "latents_std": [float(x) for x in LATENT_STD],
      "num_res_blocks": config.num_res_blocks, "temperal_downsample": list(config.temperal_downsample),
      "z_dim": config.z_dim,
  }


def save_diffusers(params: Mapping, config: VAEConfig, out: str | pathlib.Path, dtype=np.float32) -> int:
  """Writes a diffusers `vae/` folder to `out`; returns the tensor count."""
  tensors = to_diffusers_names(vae_params_to_torch(params, config, dtype), _entries(config))
  safetensors_io.save_diffusers_folder(tensors, diffusers_config(config), out)
  return len(tensors)


def read_state_dict(path: str | pathlib.Path, config: VAEConfig) -> tuple[dict[str, np.ndarray], str]:
  """(reference-named tensors, layout 'wan' or 'diffusers') of a VAE file.

  `Wan2.1_VAE.pth`, a `.safetensors` file in the original or in diffusers' `AutoencoderKLWan`
  names, a diffusers `vae/` folder, its pipeline root, or a huggingface_hub cache folder.
  """
  path = paths.resolve(path, "vae")
  if path.suffix in (".pt", ".pth"):
    state_dict = torch_pickle.load_torch_file(path)
    if not isinstance(state_dict, Mapping):
      raise CheckpointError(f"{path}: expected a state dict at the top level, found {type(state_dict).__name__}")
  else:
    state_dict = safetensors_io.load_safetensors(path)
  entries = _entries(config)
  if naming_of(state_dict, entries, str(path)) == "diffusers":
    return to_reference_names(state_dict, entries, str(path)), "diffusers"
  return dict(state_dict), "wan"


def load_vae_checkpoint(path: str | pathlib.Path, config: VAEConfig, dtype=np.float32) -> dict:
  """Flax params of `WanVAE(config)` from reference weights (see `read_state_dict`)."""
  state_dict, layout = read_state_dict(path, config)
  return vae_params_from_torch(state_dict, config, f"{path} ({layout} layout)", dtype)


def find_config(path: str | pathlib.Path) -> VAEConfig | None:
  """The architecture in a diffusers `vae/config.json` beside (or in) the weights, if any."""
  path = paths.resolve(path, "vae")
  beside = (path if path.is_dir() else path.parent) / "config.json"
  if not beside.is_file():
    return None
  raw = json.loads(beside.read_text())
  if raw.get("_class_name") != DIFFUSERS_CLASS:
    return None
  if raw.get("is_residual") or raw.get("patch_size"):
    raise CheckpointError(f"{beside}: a Wan2.2 VAE (is_residual/patch_size); only the Wan2.1 VAE is supported")
  default = VAEConfig()
  return VAEConfig(dim=raw.get("base_dim", default.dim), z_dim=raw.get("z_dim", default.z_dim),
                   dim_mult=tuple(raw.get("dim_mult", default.dim_mult)),
                   num_res_blocks=raw.get("num_res_blocks", default.num_res_blocks),
                   temperal_downsample=tuple(raw.get("temperal_downsample", default.temperal_downsample)))
