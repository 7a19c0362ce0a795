"""`python -m cf_jax.convert`: PyTorch weights -> orbax Flax params, and back.

Examples:
  # the Wan VAE
  python -m cf_jax.convert --kind vae --src wan_models/Wan2.1-T2V-1.3B/Wan2.1_VAE.pth --model wan21 --out ckpt/vae
  # the umT5-XXL text encoder
  python -m cf_jax.convert --kind t5 --src wan_models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth \
      --model umt5_xxl --out ckpt/umt5_xxl
  # Wan2.1 base weights (single file, sharded index, or the model directory)
  python -m cf_jax.convert --src wan_models/Wan2.1-T2V-1.3B --model t2v_1_3b --out ckpt/wan_1_3b
  # the diffusers layout: pipeline root, transformer/ folder, or a huggingface_hub cache folder
  python -m cf_jax.convert --src wan_models/Wan2.1-T2V-1.3B-Diffusers --out ckpt/wan_1_3b
  # a released Causal Forcing checkpoint: --preset records how it samples and picks its entry
  python -m cf_jax.convert --src checkpoints/framewise/causal_forcing.pt --preset framewise --out ckpt/cf_framewise
  # any other training checkpoint: name the entry and the sampling setup
  python -m cf_jax.convert --src runs/my.pt --entry generator_ema --model t2v_1_3b \
      --frames_per_block 1 --denoising_steps 1000,750,500,250 --out ckpt/my
  # back to PyTorch: original-Wan safetensors, a diffusers transformer/ folder, or a .pt for inference.py
  python -m cf_jax.convert --reverse --src ckpt/cf_framewise --out causal_forcing.safetensors
  python -m cf_jax.convert --reverse --format diffusers --src ckpt/cf_framewise --out export/transformer
  python -m cf_jax.convert --reverse --format pt --src ckpt/cf_framewise --out causal_forcing.pt
  python -m cf_jax.convert --reverse --kind vae --format diffusers --src ckpt/vae --out export/vae
"""
import dataclasses
import pathlib
import shutil
import sys

from absl import flags
from absl import logging
import jax
import numpy as np

from cf_jax import checkpoint
from cf_jax import cli
from cf_jax import weights
from cf_jax.convert import safetensors_io
from cf_jax.convert import vae as convert_vae
from cf_jax.convert import wan as convert_wan
from cf_jax.convert.errors import CheckpointError
from cf_jax.diffusion import sampling_setup
from cf_jax.errors import UserError
from cf_jax.models.config import WanConfig

_SRC = flags.DEFINE_string("src", None, "PyTorch weights (.safetensors, index .json, model dir, diffusers "
                           "transformer/ or vae/ folder or pipeline root, huggingface_hub models--ORG--NAME "
                           "folder, .pt/.pth), or with --reverse a converted checkpoint directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output: a checkpoint directory; with --reverse a .safetensors file, "
                           "a diffusers transformer/ or vae/ folder, or a .pt file (see --format).", required=True)
_KIND = flags.DEFINE_enum("kind", "wan", sorted(weights.NETWORKS),
                          "Network: the Wan DiT, the VAE or the umT5 text encoder.")
_MODEL = flags.DEFINE_string("model", None, "Preset: t2v_1_3b, t2v_14b, tiny (DiT); wan21, tiny (VAE); "
                             "umt5_xxl, tiny (t5). Default: the config.json beside --src.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", None, "A Wan2.1 or diffusers config.json instead of --model "
                                    "(default: the config.json beside --src, if any).")
_ENTRY = flags.DEFINE_enum("entry", None, list(convert_wan.TRAINING_ENTRIES),
                           "Entry of a .pt training checkpoint (default: the --preset's, else generator, else "
                           "model, else generator_ema).")
_PRESET = flags.DEFINE_enum("preset", None, sorted(sampling_setup.RELEASED),
                            "A released Causal Forcing checkpoint: records how it samples, picks the entry its "
                            "README loads and the model (t2v_1_3b). chunkwise: chunkwise/causal_forcing.pt; "
                            "framewise: framewise/causal_forcing.pt; cfpp_2step / cfpp_1step: "
                            "causal-forcing++/framewise-{2,1}step.pt.")
_FRAMES_PER_BLOCK = flags.DEFINE_integer("frames_per_block", None, "Sampling setup to record: 1 frame-wise, "
                                         "3 chunk-wise (overrides the --preset's).")
_DENOISING_STEPS = flags.DEFINE_list("denoising_steps", None, "Sampling setup to record: unwarped step list, "
                                     "e.g. 1000,750,500,250.")
_FIRST_BLOCK_STEPS = flags.DEFINE_list("first_block_denoising_steps", None, "Sampling setup to record: the "
                                       "first block's step list (Causal Forcing++ 1/2-step); 'none' for none.")
_SHIFT = flags.DEFINE_float("timestep_shift", None, "Sampling setup to record: the step lists' warp shift (5).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Dtype of the written weights.")
_REVERSE = flags.DEFINE_bool("reverse", False, "Export a converted DiT or VAE checkpoint to PyTorch formats.")
_FORMAT = flags.DEFINE_enum("format", "safetensors", ["safetensors", "diffusers", "pt"],
                            "With --reverse: original Wan2.1 names in one .safetensors; a diffusers transformer/ "
                            "or vae/ folder (config.json + diffusion_pytorch_model.safetensors); or (DiT) a Causal "
                            "Forcing .pt with generator and generator_ema entries, as the reference's inference.py "
                            "loads.")
_EMA_SRC = flags.DEFINE_string("ema_src", None, "With --reverse --format pt: the converted checkpoint of the "
                               "generator_ema entry (default: the --src weights in both entries).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output.")


def _config():
  if _MODEL.value and _MODEL_CONFIG.value:
    raise UserError("give --model or --model_config, not both")
  if _MODEL.value:
    return weights.NETWORKS[_KIND.value].preset(_MODEL.value)
  if _MODEL_CONFIG.value:
    if _KIND.value != "wan":
      raise UserError(f"--model_config describes the Wan DiT; name the {_KIND.value} preset with --model")
    return WanConfig.from_json(_MODEL_CONFIG.value)
  if _PRESET.value and weights.NETWORKS["wan"].find_config(_SRC.value) is None:
    return WanConfig.from_preset(sampling_setup.RELEASED[_PRESET.value].model)
  return None  # the config.json beside the weights, or an error saying what to pass


def _sampling() -> sampling_setup.SamplingSetup | None:
  """The --preset's setup with the explicit flags over it; None when neither is given."""
  overrides = {}
  if _FRAMES_PER_BLOCK.value is not None:
    overrides["frames_per_block"] = _FRAMES_PER_BLOCK.value
  if _DENOISING_STEPS.value is not None:
    overrides["denoising_steps"] = tuple(map(int, _DENOISING_STEPS.value))
  if _FIRST_BLOCK_STEPS.value is not None:
    first = _FIRST_BLOCK_STEPS.value
    overrides["first_block_denoising_steps"] = None if first == ["none"] else tuple(map(int, first))
  if _SHIFT.value is not None:
    overrides["timestep_shift"] = _SHIFT.value
  if _PRESET.value:
    return dataclasses.replace(sampling_setup.RELEASED[_PRESET.value].setup, **overrides)
  if not overrides:
    return None
  if "frames_per_block" not in overrides or "denoising_steps" not in overrides:
    raise UserError("without --preset, record a sampling setup with both --frames_per_block and --denoising_steps")
  return sampling_setup.SamplingSetup(**overrides)


def _dtype():
  return jax.numpy.bfloat16 if _DTYPE.value == "bfloat16" else np.float32


def convert() -> str:
  network = weights.NETWORKS[_KIND.value]
  sampling = _sampling() if _KIND.value == "wan" else None
  if _KIND.value != "wan" and (_PRESET.value or _FRAMES_PER_BLOCK.value or _DENOISING_STEPS.value):
    raise UserError(f"--preset and the sampling flags describe a DiT, not --kind {_KIND.value}")
  entry = _ENTRY.value or (sampling_setup.RELEASED[_PRESET.value].entry if _PRESET.value else None)
  cfg, params, source = weights.load_with_source(_KIND.value, _SRC.value, _config(), entry, _dtype())
  if sampling is None and source.get("sampling"):  # re-converting a converted checkpoint keeps its setup
    sampling = sampling_setup.SamplingSetup.from_info(source["sampling"])
  source = {"layout": source.get("layout", "converted"), "entry": source.get("entry"),
            "entries": list(source.get("entries", []))}
  info = {"network": network.name, "config": checkpoint.config_dict(cfg), "source": _SRC.value, **source,
          "sampling": sampling.to_info() if sampling else None}
  checkpoint.save_params(_OUT.value, params, info, overwrite=_OVERWRITE.value)
  count = sum(x.size for x in jax.tree.leaves(params))
  lines = [f"wrote {_OUT.value}: {network.name} with {count:,} parameters ({_DTYPE.value}) from the "
           f"{source['layout']} layout"]
  if source["entry"] and not _ENTRY.value and not weights.is_params_checkpoint(_SRC.value):
    lines.append(f"took entry {source['entry']!r} of {', '.join(source['entries'])} "
                 f"({'the --preset' if _PRESET.value else 'the default'}; --entry picks another)")
  if _KIND.value == "wan":
    lines.append(f"sampling: {sampling.describe()}" if sampling else
                 "sampling: not recorded (pass --preset or --frames_per_block/--denoising_steps; "
                 "sample then needs --frames_per_block and --steps)")
  return "\n".join(lines)


def _free(out: pathlib.Path):
  if out.exists() and not _OVERWRITE.value:
    raise CheckpointError(f"{out} already exists; choose another --out or pass --overwrite")
  if out.is_dir():
    shutil.rmtree(out)


def reverse_vae(out: pathlib.Path) -> str:
  if _FORMAT.value == "pt":
    raise UserError("--format pt writes a Causal Forcing training checkpoint; export the VAE as safetensors or diffusers")
  cfg, params = weights.load("vae", _SRC.value, dtype=_dtype())
  _free(out)
  if _FORMAT.value == "diffusers":
    count = convert_vae.save_diffusers(params, cfg, out, _dtype())
    return f"wrote {out}: config.json and {safetensors_io.DIFFUSERS_WEIGHTS} with {count} tensors in AutoencoderKLWan names"
  state_dict = convert_vae.vae_params_to_torch(params, cfg, _dtype())
  safetensors_io.save_safetensors(state_dict, out)
  return f"wrote {out}: {len(state_dict)} tensors with the original Wan2.1_VAE.pth names"


def reverse() -> str:
  if _KIND.value == "t5":
    raise UserError("--reverse exports the Wan DiT and the VAE, not --kind t5")
  if _EMA_SRC.value and _FORMAT.value != "pt":
    raise UserError("--ema_src applies to --format pt only")
  out = pathlib.Path(_OUT.value)
  if _KIND.value == "vae":
    return reverse_vae(out)
  cfg, params = weights.load_wan(_SRC.value, dtype=_dtype())
  if _FORMAT.value == "pt":
    ema = weights.load_wan(_EMA_SRC.value, cfg, dtype=_dtype())[1] if _EMA_SRC.value else params
    _free(out)
    count = convert_wan.save_training_checkpoint({"generator": params, "generator_ema": ema}, cfg, out, _dtype())
    return (f"wrote {out}: entries generator and generator_ema ({'from --ema_src' if _EMA_SRC.value else 'the same weights'}), "
            f"{count} tensors each, named model.<Wan2.1 name>")
  if _FORMAT.value == "diffusers":
    _free(out)
    count = convert_wan.save_diffusers(params, cfg, out, _dtype())
    return f"wrote {out}: config.json and {safetensors_io.DIFFUSERS_WEIGHTS} with {count} tensors in diffusers names"
  state_dict = convert_wan.params_to_torch(params, cfg, dtype=_dtype())
  _free(out)
  safetensors_io.save_safetensors(state_dict, out)
  return f"wrote {out}: {len(state_dict)} tensors with original Wan2.1 names"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  print(reverse() if _REVERSE.value else convert())


if __name__ == "__main__":
  cli.run(main)
