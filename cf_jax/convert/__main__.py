"""`python -m cf_jax.convert`: PyTorch weights -> orbax Flax params, and back.

Examples:
  # the Wan VAE
  python -m cf_jax.convert --kind vae --src wan_models/Wan2.1-T2V-1.3B/Wan2.1_VAE.pth --model wan21 --out ckpt/vae
  # the umT5-XXL text encoder
  python -m cf_jax.convert --kind t5 --src wan_models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth \
      --model umt5_xxl --out ckpt/umt5_xxl
  # Wan2.1 base weights (single file, sharded index, or the model directory)
  python -m cf_jax.convert --src wan_models/Wan2.1-T2V-1.3B --model t2v_1_3b --out ckpt/wan_1_3b
  # a Causal Forcing training checkpoint, EMA weights
  python -m cf_jax.convert --src checkpoints/framewise/causal_forcing.pt --entry generator_ema \
      --model t2v_1_3b --out ckpt/cf_framewise_ema
  # back to original-Wan safetensors names, for PyTorch tools
  python -m cf_jax.convert --reverse --src ckpt/cf_framewise_ema --out causal_forcing.safetensors
"""
import pathlib

from absl import flags
from absl import logging
import jax
import numpy as np

from cf_jax import checkpoint
from cf_jax import cli
from cf_jax import weights
from cf_jax.convert import safetensors_io
from cf_jax.convert import wan as convert_wan
from cf_jax.convert.errors import CheckpointError
from cf_jax.errors import UserError
from cf_jax.models.config import WanConfig

_SRC = flags.DEFINE_string("src", None, "PyTorch weights (.safetensors, index .json, model dir, .pt/.pth), "
                           "or with --reverse a converted checkpoint directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output: checkpoint directory, or a .safetensors file with --reverse.",
                           required=True)
_KIND = flags.DEFINE_enum("kind", "wan", sorted(weights.NETWORKS),
                          "Network: the Wan DiT, the VAE or the umT5 text encoder.")
_MODEL = flags.DEFINE_string("model", None, "Preset: t2v_1_3b, t2v_14b, tiny (DiT); wan21, tiny (VAE); "
                             "umt5_xxl, tiny (t5).")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "A Wan2.1 config.json instead of --model "
                                    "(default: the config.json beside --src, if any).")
_ENTRY = flags.DEFINE_enum("entry", None, list(convert_wan.TRAINING_ENTRIES),
                           "Entry of a .pt training checkpoint (default: generator, else model, else generator_ema).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the written weights.")
_REVERSE = flags.DEFINE_bool("reverse", False, "Export a converted checkpoint to original-Wan safetensors.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")


def _config():
  if _MODEL.value and _MODEL_CONFIG.value:
    raise UserError("give --model or --model_config, not both")
  if _MODEL.value:
    return weights.NETWORKS[_KIND.value].preset(_MODEL.value)
  if _KIND.value != "wan":
    raise UserError(f"name the {_KIND.value} preset with --model ({', '.join(weights.NETWORKS[_KIND.value].presets)})")
  if _MODEL_CONFIG.value:
    return WanConfig.from_wan_json(_MODEL_CONFIG.value)
  src = pathlib.Path(_SRC.value)
  beside = (src if src.is_dir() else src.parent) / "config.json"
  if beside.is_file():
    return WanConfig.from_wan_json(beside)
  raise UserError("name the architecture with --model (t2v_1_3b, t2v_14b, tiny) or --model_config config.json")


def _dtype():
  return jax.numpy.bfloat16 if _DTYPE.value == "bfloat16" else np.float32


def convert() -> str:
  network = weights.NETWORKS[_KIND.value]
  cfg, params = weights.load(_KIND.value, _SRC.value, _config(), _ENTRY.value, _dtype())
  info = {"network": network.name, "config": checkpoint.config_dict(cfg), "source": _SRC.value,
          "entry": _ENTRY.value}
  checkpoint.save_params(_OUT.value, params, info, overwrite=_OVERWRITE.value)
  count = sum(x.size for x in jax.tree.leaves(params))
  return f"wrote {_OUT.value}: {network.name} with {count:,} parameters ({_DTYPE.value})"


def reverse() -> str:
  if _KIND.value != "wan":
    raise UserError(f"--reverse exports the Wan DiT only, not --kind {_KIND.value}")
  cfg, params = weights.load_wan(_SRC.value, dtype=_dtype())
  state_dict = convert_wan.params_to_torch(params, cfg, dtype=_dtype())
  if pathlib.Path(_OUT.value).exists() and not _OVERWRITE.value:
    raise CheckpointError(f"{_OUT.value} already exists; choose another --out or pass --overwrite")
  safetensors_io.save_safetensors(state_dict, _OUT.value)
  return f"wrote {_OUT.value}: {len(state_dict)} tensors with original Wan2.1 names"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  print(reverse() if _REVERSE.value else convert())


if __name__ == "__main__":
  cli.run(main)
