"""PyTorch Wan2.1 DiT state dicts <-> Flax params of `cf_jax.models.wan.WanModel`.

One table (`_entries`) names every reference tensor, its place in the Flax tree, how its layout
changes and its diffusers name; conversion in every direction reads the same table, so they cannot
drift apart. Files in the original names, in diffusers' names, and Causal/Self Forcing `.pt`
training checkpoints are read; all three are written back.
Reference names: architecture.md §8 (e.g. `blocks.3.self_attn.q.weight`, Linear weights [out, in]).
"""
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from cf_jax.convert import paths
from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert.errors import CheckpointError
from cf_jax.convert.key_check import check_state_dict, naming_of, to_diffusers_names, to_reference_names
from cf_jax.convert.key_map import Entry, get_path, set_path
from cf_jax.models.config import WanConfig

Kind = Literal["linear", "vector", "patch", "modulation"]

# Training checkpoints of the reference hold these top-level entries (architecture.md §8.7).
TRAINING_ENTRIES = ("generator", "generator_ema", "critic", "model")
# Wrapper prefixes that FSDP, activation checkpointing and torch.compile insert into names.
_WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _linear(torch_prefix, diffusers_prefix, flax_path, d_in, d_out):
  return [
      Entry(f"{torch_prefix}.weight", (*flax_path, "kernel"), "linear", (d_out, d_in), f"{diffusers_prefix}.weight"),
      Entry(f"{torch_prefix}.bias", (*flax_path, "bias"), "vector", (d_out,), f"{diffusers_prefix}.bias"),
  ]


def _entries(cfg: WanConfig) -> list[Entry]:
  """Every tensor: reference name, Flax path, layout kind, shape, diffusers name.

  Diffusers renames but never reshapes: `modulation` is `scale_shift_table`, attention is
  `attn1`/`attn2` with `to_q`..`to_out.0`, and the affine cross-attention norm is `norm2`
  (the reference's `norm3`).
  """
  d, pt, ph, pw = cfg.dim, *cfg.patch_size
  out = [
      Entry("patch_embedding.weight", ("patch_embedding", "kernel"), "patch", (d, cfg.in_dim, pt, ph, pw),
            "patch_embedding.weight"),
      Entry("patch_embedding.bias", ("patch_embedding", "bias"), "vector", (d,), "patch_embedding.bias"),
      *_linear("text_embedding.0", "condition_embedder.text_embedder.linear_1", ("text_embedding", "fc1"),
               cfg.text_dim, d),
      *_linear("text_embedding.2", "condition_embedder.text_embedder.linear_2", ("text_embedding", "fc2"), d, d),
      *_linear("time_embedding.0", "condition_embedder.time_embedder.linear_1", ("time_embedding_0",),
               cfg.freq_dim, d),
      *_linear("time_embedding.2", "condition_embedder.time_embedder.linear_2", ("time_embedding_1",), d, d),
      *_linear("time_projection.1", "condition_embedder.time_proj", ("time_projection",), d, 6 * d),
      Entry("head.modulation", ("head_modulation",), "modulation", (1, 2, d), "scale_shift_table"),
      *_linear("head.head", "proj_out", ("head",), d, pt * ph * pw * cfg.out_dim),
  ]
  block = [Entry("blocks.{i}.modulation", ("blocks", "modulation"), "modulation", (1, 6, d),
                 "blocks.{i}.scale_shift_table")]
  for attn, diffusers_attn in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    for proj, diffusers_proj in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0")):
      block += _linear(f"blocks.{{i}}.{attn}.{proj}", f"blocks.{{i}}.{diffusers_attn}.{diffusers_proj}",
                       ("blocks", attn, proj), d, d)
    if cfg.qk_norm:
      for norm in ("norm_q", "norm_k"):
        block.append(Entry(f"blocks.{{i}}.{attn}.{norm}.weight", ("blocks", attn, norm, "scale"), "vector", (d,),
                           f"blocks.{{i}}.{diffusers_attn}.{norm}.weight"))
  if cfg.cross_attn_norm:
    block += [
        Entry("blocks.{i}.norm3.weight", ("blocks", "norm3", "scale"), "vector", (d,), "blocks.{i}.norm2.weight"),
        Entry("blocks.{i}.norm3.bias", ("blocks", "norm3", "bias"), "vector", (d,), "blocks.{i}.norm2.bias"),
    ]
  block += _linear("blocks.{i}.ffn.0", "blocks.{i}.ffn.net.0.proj", ("blocks", "ffn_0"), d, cfg.ffn_dim)
  block += _linear("blocks.{i}.ffn.2", "blocks.{i}.ffn.net.2", ("blocks", "ffn_1"), cfg.ffn_dim, d)
  for e in block:
    out += [dataclasses.replace(e, torch_name=e.torch_name.format(i=i), diffusers_name=e.diffusers_name.format(i=i))
            for i in range(cfg.num_layers)]
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


def select_training_entry(checkpoint: Any, source: str, entry: str | None) -> tuple[str, Mapping[str, np.ndarray]]:
  """(entry, state dict): `generator`, `generator_ema`, `critic` (or `model`) of a training checkpoint.

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
  return entry, value


@dataclasses.dataclass(frozen=True)
class Source:
  """What a weights file held besides its tensors."""

  layout: str  # 'wan' (original names), 'diffusers', or 'training' (a Causal/Self Forcing .pt)
  entry: str | None = None  # the .pt entry the weights came from
  entries: tuple[str, ...] = ()  # every DiT entry the .pt holds


def read_weights(path: str | pathlib.Path, cfg: WanConfig, entry: str | None = None) -> tuple[dict[str, np.ndarray], Source]:
  """Reference-named DiT tensors from any supported file, and where they came from.

  * `.safetensors`, a sharded `*.safetensors.index.json`, or a directory holding one, in the
    original Wan2.1 names or diffusers' `WanTransformer3DModel` names (told apart by the names);
    a diffusers pipeline root or a huggingface_hub `models--ORG--NAME` folder stands for its weights.
  * `.pt` / `.pth`: a Causal/Self Forcing training checkpoint; `entry` picks generator,
    generator_ema or critic.
  """
  path = paths.resolve(path, "transformer")
  if path.suffix in (".pt", ".pth"):
    checkpoint = torch_pickle.load_torch_file(path)
    entry, sd = select_training_entry(checkpoint, str(path), entry)
    source = Source("training", entry, tuple(k for k in TRAINING_ENTRIES if k in checkpoint))
    return strip_wrapper_prefixes(sd, f"{path}[{entry}]"), source
  if entry is not None:
    raise CheckpointError(f"{path}: --entry applies to .pt training checkpoints only")
  sd = safetensors_io.load_safetensors(path)
  entries = _entries(cfg)
  if naming_of(sd, entries, str(path)) == "diffusers":
    return to_reference_names(sd, entries, str(path)), Source("diffusers")
  return sd, Source("wan")


def load(path: str | pathlib.Path, cfg: WanConfig, entry: str | None = None, dtype=np.float32) -> tuple[dict, Source]:
  """(Flax params of `WanModel(cfg)`, their `Source`) from reference weights (see `read_weights`)."""
  state_dict, source = read_weights(path, cfg, entry)
  label = f"{path}" + (f"[{source.entry}]" if source.entry else f" ({source.layout} layout)")
  return params_from_torch(state_dict, cfg, label, dtype), source


def load_params(path: str | pathlib.Path, cfg: WanConfig, entry: str | None = None, dtype=np.float32) -> dict:
  """Flax params of `WanModel(cfg)` from reference weights (see `read_weights`)."""
  return load(path, cfg, entry, dtype)[0]


def find_config(path: str | pathlib.Path) -> WanConfig | None:
  """The architecture in the `config.json` beside (or in) the weights, Wan2.1's or diffusers'."""
  path = paths.resolve(path, "transformer")
  beside = (path if path.is_dir() else path.parent) / "config.json"
  return WanConfig.from_json(beside) if beside.is_file() else None


def save_diffusers(params: Mapping[str, Any], cfg: WanConfig, out: str | pathlib.Path, dtype=np.float32) -> int:
  """Writes a diffusers `transformer/` folder to `out` (see `safetensors_io.save_diffusers_folder`);
  returns the tensor count."""
  tensors = to_diffusers_names(params_to_torch(params, cfg, dtype), _entries(cfg))
  safetensors_io.save_diffusers_folder(tensors, cfg.to_diffusers_dict(), out)
  return len(tensors)


def save_training_checkpoint(entries: Mapping[str, Mapping[str, Any]], cfg: WanConfig, out: str | pathlib.Path,
                             dtype=np.float32) -> int:
  """Writes a Causal/Self Forcing `.pt` holding each of `entries` (e.g. generator, generator_ema:
  Flax params) as the state dict of the reference's `WanDiffusionWrapper` (names `model.<name>`),
  which its inference.py --checkpoint_path loads; returns the tensors per entry."""
  state_dicts = {name: {f"model.{k}": v for k, v in params_to_torch(params, cfg, dtype).items()}
                 for name, params in entries.items()}
  torch_pickle.save_torch_file(state_dicts, out)
  return len(next(iter(state_dicts.values())))
