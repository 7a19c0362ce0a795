"""PyTorch umT5 encoder state dicts (`models_t5_umt5-xxl-enc-bf16.pth`) -> Flax params of
`cf_jax.models.t5.UMT5Encoder`.

One table (`_entries`) lists every reference tensor with its place in the Flax tree, its layout
and its shape; the checker and the converter both read it. Reference names: architecture.md §8.4
(e.g. `blocks.3.ffn.gate.0.weight`, Linear weights [out, in]); per-layer tensors are stacked on a
leading layer axis, as the scanned model holds them.
"""
import dataclasses
import pathlib
from collections.abc import Mapping
from typing import Literal

import numpy as np

from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert.errors import CheckpointError
from cf_jax.convert.key_check import check_state_dict
from cf_jax.convert.key_map import Entry, set_path
from cf_jax.models.t5 import T5Config

Kind = Literal["linear", "vector", "table"]


def _entries(cfg: T5Config) -> list[Entry]:
  d, da, f = cfg.dim, cfg.dim_attn, cfg.dim_ffn
  block = [
      Entry("blocks.{i}.norm1.weight", ("blocks", "norm1", "scale"), "vector", (d,)),
      Entry("blocks.{i}.attn.q.weight", ("blocks", "attn", "q", "kernel"), "linear", (da, d)),
      Entry("blocks.{i}.attn.k.weight", ("blocks", "attn", "k", "kernel"), "linear", (da, d)),
      Entry("blocks.{i}.attn.v.weight", ("blocks", "attn", "v", "kernel"), "linear", (da, d)),
      Entry("blocks.{i}.attn.o.weight", ("blocks", "attn", "o", "kernel"), "linear", (d, da)),
      Entry("blocks.{i}.norm2.weight", ("blocks", "norm2", "scale"), "vector", (d,)),
      Entry("blocks.{i}.ffn.gate.0.weight", ("blocks", "ffn", "gate", "kernel"), "linear", (f, d)),
      Entry("blocks.{i}.ffn.fc1.weight", ("blocks", "ffn", "fc1", "kernel"), "linear", (f, d)),
      Entry("blocks.{i}.ffn.fc2.weight", ("blocks", "ffn", "fc2", "kernel"), "linear", (d, f)),
      Entry("blocks.{i}.pos_embedding.embedding.weight", ("blocks", "pos_embedding", "embedding"), "table",
            (cfg.num_buckets, cfg.num_heads)),
  ]
  out = [Entry("token_embedding.weight", ("token_embedding", "embedding"), "table", (cfg.vocab_size, d))]
  for i in range(cfg.num_layers):
    out += [dataclasses.replace(e, torch_name=e.torch_name.format(i=i)) for e in block]
  out.append(Entry("norm.weight", ("norm", "scale"), "vector", (d,)))
  return out


def expected_torch_shapes(cfg: T5Config) -> dict[str, tuple[int, ...]]:
  """Every reference parameter name with its shape (242 tensors for umT5-XXL)."""
  return {e.torch_name: e.torch_shape for e in _entries(cfg)}


def _to_flax(kind: Kind, w: np.ndarray) -> np.ndarray:
  return w.T if kind == "linear" else w  # Linear [out, in] -> Dense kernel [in, out]


def _layer_index(torch_name: str) -> int | None:
  return int(torch_name.split(".")[1]) if torch_name.startswith("blocks.") else None


def t5_params_from_torch(
    state_dict: Mapping[str, np.ndarray], config: T5Config, source: str = "umT5 state dict", dtype=np.float32
) -> dict:
  """Reference names and layouts -> the Flax param tree of `UMT5Encoder(config)`. Strict."""
  check_state_dict(state_dict, expected_torch_shapes(config), source)
  params: dict = {}
  stacked: dict[tuple[str, ...], list] = {}
  for e in _entries(config):
    w = np.ascontiguousarray(_to_flax(e.kind, np.asarray(state_dict[e.torch_name]))).astype(dtype)
    i = _layer_index(e.torch_name)
    if i is None:
      set_path(params, e.flax_path, w)
    else:
      stacked.setdefault(e.flax_path, [None] * config.num_layers)[i] = w
  for path, layers in stacked.items():
    set_path(params, path, np.stack(layers))
  return params


def load_t5_state_dict(path: str | pathlib.Path) -> Mapping[str, np.ndarray]:
  """Reference tensors from a `.pth`/`.pt` state dict or a `.safetensors` file (same names)."""
  path = pathlib.Path(path)
  if path.suffix in (".pt", ".pth"):
    state_dict = torch_pickle.load_torch_file(path)
    if not isinstance(state_dict, Mapping):
      raise CheckpointError(f"{path}: expected a state dict at the top level, found {type(state_dict).__name__}")
    return state_dict
  if path.suffix == ".safetensors":
    return safetensors_io.load_safetensors(path)
  raise CheckpointError(f"{path}: expected a .pth/.pt state dict (models_t5_umt5-xxl-enc-bf16.pth) or a "
                        ".safetensors file with the same tensor names")


def load_t5_checkpoint(path: str | pathlib.Path, config: T5Config, entry: str | None = None, dtype=np.float32) -> dict:
  """Flax params of `UMT5Encoder(config)` from reference weights (bf16 on disk is upcast to `dtype`).

  `entry` exists for the common loader signature; a T5 file is a plain state dict, so it must be None.
  """
  if entry is not None:
    raise CheckpointError(f"{path}: --entry applies to Causal/Self Forcing training checkpoints only")
  return t5_params_from_torch(load_t5_state_dict(path), config, str(path), dtype)
