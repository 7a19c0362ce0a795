"""PyTorch Wan2.1 DiT state dicts <-> Flax params of `cf_jax.models.wan.WanModel`.

One table (`_entries`) names every reference tensor, its place in the Flax tree and how its layout
changes; conversion in both directions reads the same table, so the two cannot drift apart.
Reference names: architecture.md §8 (e.g. `blocks.3.self_attn.q.weight`, Linear weights [out, in]).
"""
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert.errors import CheckpointError
from cf_jax.convert.key_check import check_state_dict
from cf_jax.convert.key_map import Entry, get_path, set_path
from cf_jax.models.config import WanConfig

Kind = Literal["linear", "vector", "patch", "modulation"]

# Training checkpoints of the reference hold these top-level entries (architecture.md §8.7).
TRAINING_ENTRIES = ("generator", "generator_ema", "critic", "model")
# Wrapper prefixes that FSDP, activation checkpointing and torch.compile insert into names.
_WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _linear(torch_prefix, flax_path, d_in, d_out):
  return [
      Entry(f"{torch_prefix}.weight", (*flax_path, "kernel"), "linear", (d_out, d_in)),
      Entry(f"{torch_prefix}.bias", (*flax_path, "bias"), "vector", (d_out,)),
  ]


def _entries(cfg: WanConfig) -> list[Entry]:
  d, pt, ph, pw = cfg.dim, *cfg.patch_size
  out = [
      Entry("patch_embedding.weight", ("patch_embedding", "kernel"), "patch", (d, cfg.in_dim, pt, ph, pw)),
      Entry("patch_embedding.bias", ("patch_embedding", "bias"), "vector", (d,)),
      *_linear("text_embedding.0", ("text_embedding", "fc1"), cfg.text_dim, d),
      *_linear("text_embedding.2", ("text_embedding", "fc2"), d, d),
      *_linear("time_embedding.0", ("time_embedding_0",), cfg.freq_dim, d),
      *_linear("time_embedding.2", ("time_embedding_1",), d, d),
      *_linear("time_projection.1", ("time_projection",), d, 6 * d),
      Entry("head.modulation", ("head_modulation",), "modulation", (1, 2, d)),
      *_linear("head.head", ("head",), d, pt * ph * pw * cfg.out_dim),
  ]
  block = [Entry("blocks.{i}.modulation", ("blocks", "modulation"), "modulation", (1, 6, d))]
  for attn in ("self_attn", "cross_attn"):
    for proj in ("q", "k", "v", "o"):
      block += _linear(f"blocks.{{i}}.{attn}.{proj}", ("blocks", attn, proj), d, d)
    if cfg.qk_norm:
      for norm in ("norm_q", "norm_k"):
        block.append(Entry(f"blocks.{{i}}.{attn}.{norm}.weight", ("blocks", attn, norm, "scale"), "vector", (d,)))
  if cfg.cross_attn_norm:
    block += [
        Entry("blocks.{i}.norm3.weight", ("blocks", "norm3", "scale"), "vector", (d,)),
        Entry("blocks.{i}.norm3.bias", ("blocks", "norm3", "bias"), "vector", (d,)),
    ]
  block += _linear("blocks.{i}.ffn.0", ("blocks", "ffn_0"), d, cfg.ffn_dim)
  block += _linear("blocks.{i}.ffn.2", ("blocks", "ffn_1"), cfg.ffn_dim, d)
  for e in block:
    out += [dataclasses.replace(e, torch_name=e.torch_name.format(i=i)) for i in range(cfg.num_layers)]
  return out


def expected_torch_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
  """Every reference parameter name with its shape (825 tensors for the 1.3B)."""
  return {e.torch_name: e.torch_shape for e in _entries(cfg)}


def _to_flax(kind: Kind, w: np.ndarray) -> np.ndarray:
  if kind == "linear":
    return w.T
  if kind == "patch":  # Conv3d [D, C, pt, ph, pw] -> Dense [C·pt·ph·pw, D]
    return w.reshape(w.shape[0], -1).T
  if kind == "modulation":  # [1, k, D] -> [k, D]
    return w[0]
  return w


def _to_torch(kind: Kind, w: np.ndarray, torch_shape: tuple[int, ...]) -> np.ndarray:
  if kind in ("linear", "patch"):
    return np.ascontiguousarray(w.T).reshape(torch_shape)
  return w.reshape(torch_shape)


def _layer_index(torch_name: str) -> int | None:
  return int(torch_name.split(".")[1]) if torch_name.startswith("blocks.") else None


def params_from_torch(state_dict: Mapping[str, np.ndarray], cfg: WanConfig, source: str, dtype=np.float32) -> dict:
  """Reference names -> Flax param tree (blocks stacked on a leading layer axis). Strict."""
  check_state_dict(state_dict, expected_torch_shapes(cfg), source)
  stacked: dict[tuple[str, ...], list] = {}
  params: dict[str, Any] = {}
  for e in _entries(cfg):
    w = _to_flax(e.kind, np.asarray(state_dict[e.torch_name])).astype(dtype)
    if _layer_index(e.torch_name) is None:
      set_path(params, e.flax_path, w)
    else:
      stacked.setdefault(e.flax_path, [None] * cfg.num_layers)[_layer_index(e.torch_name)] = w
  for path, layers in stacked.items():
    set_path(params, path, np.stack(layers))
  return params


def params_to_torch(params: Mapping[str, Any], cfg: WanConfig, dtype=np.float32) -> dict[str, np.ndarray]:
  """Flax param tree -> reference names and layouts (Wan2.1 `diffusion_pytorch_model` names)."""
  out = {}
  for e in _entries(cfg):
    w = np.asarray(_get(params, e.flax_path, e.torch_name))
    i = _layer_index(e.torch_name)
    out[e.torch_name] = _to_torch(e.kind, w if i is None else w[i], e.torch_shape).astype(dtype)
  return out


def _get(tree: Mapping, path: tuple[str, ...], name: str):
  try:
    return get_path(tree, path)
  except (KeyError, TypeError):
    raise CheckpointError(f"params have no {'/'.join(path)} (needed for {name}); are they WanModel params of this config?") from None


def strip_wrapper_prefixes(state_dict: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
  """Training-checkpoint names (`model.` + optional FSDP/compile wrappers) -> plain DiT names."""
  out = {}
  for name, w in state_dict.items():
    parts = [p for p in name.split(".") if f"{p}." not in _WRAPPER_PREFIXES]
    if not parts or parts[0] != "model":
      raise CheckpointError(
          f"{source}: key {name!r} lacks the 'model.' prefix of a Causal/Self Forcing training "
          "checkpoint; pass a Wan2.1 .safetensors file for plain names"
      )
    out[".".join(parts[1:])] = w
  return out


def select_training_entry(checkpoint: Any, source: str, entry: str | None) -> Mapping[str, np.ndarray]:
  """Picks `generator`, `generator_ema`, `critic` (or `model`) from a training checkpoint.

  Without `entry`, the first present of generator, model, generator_ema is used, as the
  reference trainers do.
  """
  if not isinstance(checkpoint, Mapping):
    raise CheckpointError(f"{source}: expected a dict at the top level, found {type(checkpoint).__name__}")
  present = [k for k in TRAINING_ENTRIES if k in checkpoint]
  if entry is None:
    order = ("generator", "model", "generator_ema")
    entry = next((k for k in order if k in checkpoint), None)
    if entry is None:
      raise CheckpointError(
          f"{source}: none of {list(order)} found (top-level keys: {sorted(map(str, checkpoint))[:8]}); "
          "is this a Causal/Self Forcing training checkpoint?"
      )
  elif entry not in checkpoint:
    raise CheckpointError(f"{source}: no entry {entry!r}; it holds {present or sorted(map(str, checkpoint))[:8]}")
  value = checkpoint[entry]
  if not isinstance(value, Mapping):
    raise CheckpointError(f"{source}: entry {entry!r} is not a state dict")
  return value


def load_torch_state_dict(path: str | pathlib.Path, entry: str | None = None) -> dict[str, np.ndarray]:
  """Reads reference DiT weights with plain names from any supported file.

  * `.safetensors`, a sharded `*.safetensors.index.json`, or a directory holding one: Wan2.1
    `diffusion_pytorch_model` weights.
  * `.pt` / `.pth`: a Causal/Self Forcing training checkpoint; `entry` picks generator,
    generator_ema or critic.
  """
  path = pathlib.Path(path)
  if path.suffix in (".pt", ".pth"):
    sd = select_training_entry(torch_pickle.load_torch_file(path), str(path), entry)
    return strip_wrapper_prefixes(sd, f"{path}[{entry or 'default entry'}]")
  if entry is not None:
    raise CheckpointError(f"{path}: --entry applies to .pt training checkpoints only")
  return safetensors_io.load_safetensors(path)


def load_params(path: str | pathlib.Path, cfg: WanConfig, entry: str | None = None, dtype=np.float32) -> dict:
  """Flax params of `WanModel(cfg)` from reference weights (see `load_torch_state_dict`)."""
  label = f"{path}" + (f"[{entry}]" if entry else "")
  return params_from_torch(load_torch_state_dict(path, entry), cfg, label, dtype)
