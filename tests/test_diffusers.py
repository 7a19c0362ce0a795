"""The diffusers layout (`WanTransformer3DModel`, `AutoencoderKLWan`), written here as diffusers
writes it, loads to the same params as the original layout of the same tensors; every export
reads back to the same params.

The test's own renaming (`diffusers_dit_names`, `diffusers_vae_names`) follows diffusers'
conversion script rule by rule, independently of the package's key tables.
"""
import dataclasses
import json
import pathlib
import re

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from cf_jax import weights
from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert import vae as convert_vae
from cf_jax.convert import wan as convert_wan
from cf_jax.convert.errors import CheckpointError
from cf_jax.models.config import WanConfig
from cf_jax.models.vae import VAEConfig
from tests import hub_cache
from tests.conftest import FIXTURES

CFG = WanConfig.tiny()

# Applied in order as substring replacements, as diffusers' convert_wan_to_diffusers.py does; the
# norm2/norm3 swap goes through a placeholder.
_DIT_RULES = [
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1"),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    ("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
    ("self_attn.o", "attn1.to_out.0"), ("self_attn.norm_q", "attn1.norm_q"), ("self_attn.norm_k", "attn1.norm_k"),
    ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"), ("cross_attn.v", "attn2.to_v"),
    ("cross_attn.o", "attn2.to_out.0"), ("cross_attn.norm_q", "attn2.norm_q"), ("cross_attn.norm_k", "attn2.norm_k"),
]

TINY_DIFFUSERS_CONFIG = {  # what diffusers writes for WanTransformer3DModel, at the tiny size
    "_class_name": "WanTransformer3DModel", "_diffusers_version": "0.33.0.dev0", "added_kv_proj_dim": None,
    "attention_head_dim": 32, "cross_attn_norm": True, "eps": 1e-06, "ffn_dim": 256, "freq_dim": 256,
    "image_dim": None, "in_channels": 16, "num_attention_heads": 4, "num_layers": 2, "out_channels": 16,
    "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "text_dim": 64,
}

TINY_VAE_CONFIG = {
    "_class_name": "AutoencoderKLWan", "_diffusers_version": "0.33.0.dev0", "attn_scales": [], "base_dim": 8,
    "dim_mult": [1, 2, 4, 4], "dropout": 0.0, "num_res_blocks": 2, "temperal_downsample": [False, True, True],
    "z_dim": 16, "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16,
}


def diffusers_dit_names(state_dict):
  out = {}
  for name, value in state_dict.items():
    for old, new in _DIT_RULES:
      name = name.replace(old, new)
    out[name] = value
  return out


_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2": "conv1", "residual.3.gamma": "norm2.gamma",
             "residual.6": "conv2", "shortcut": "conv_shortcut"}


def _vae_name(name: str, res_blocks_per_up_block: int) -> str:
  net, rest = name.split(".", 1) if name.startswith(("encoder.", "decoder.")) else ("", name)
  if not net:
    return {"conv1": "quant_conv", "conv2": "post_quant_conv"}[rest.split(".")[0]] + "." + rest.split(".", 1)[1]
  rest = re.sub(r"^conv1\.", "conv_in.", rest)
  rest = re.sub(r"^head\.0\.", "norm_out.", rest)
  rest = re.sub(r"^head\.2\.", "conv_out.", rest)
  rest = re.sub(r"^middle\.1\.", "mid_block.attentions.0.", rest)
  rest = re.sub(r"^middle\.(0|2)\.", lambda m: f"mid_block.resnets.{int(m[1]) // 2}.", rest)
  rest = re.sub(r"^downsamples\.", "down_blocks.", rest)
  # The decoder's flat list: each up block is its resnets then one upsampler.
  rest = re.sub(r"^upsamples\.(\d+)\.", lambda m: _up_block(int(m[1]), res_blocks_per_up_block), rest)
  rest += "."  # so that every part, the last one too, ends in a dot
  for old, new in _RESIDUAL.items():
    rest = rest.replace(f".{old}.", f".{new}.")
  return f"{net}.{rest[:-1]}"


def _up_block(j: int, resnets: int) -> str:
  block, k = divmod(j, resnets + 1)
  return f"up_blocks.{block}.upsamplers.0." if k == resnets else f"up_blocks.{block}.resnets.{k}."


def diffusers_vae_names(state_dict, num_res_blocks=2):
  return {_vae_name(k, num_res_blocks + 1): v for k, v in state_dict.items()}


def write_pipeline(root, dit_state_dict, vae_state_dict, shards=2):
  """A diffusers pipeline folder: model_index.json, transformer/ (sharded, with its index), vae/."""
  (root / "transformer").mkdir(parents=True)
  (root / "vae").mkdir()
  (root / "model_index.json").write_text(json.dumps({
      "_class_name": "WanPipeline", "transformer": ["diffusers", "WanTransformer3DModel"],
      "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "UMT5EncoderModel"]}))
  (root / "transformer" / "config.json").write_text(json.dumps(TINY_DIFFUSERS_CONFIG))
  names = sorted(dit_state_dict)
  weight_map = {}
  for i in range(shards):
    shard = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
    part = names[i::shards]
    save_file({k: dit_state_dict[k] for k in part}, str(root / "transformer" / shard), {"format": "pt"})
    weight_map |= {k: shard for k in part}
  (root / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
  (root / "vae" / "config.json").write_text(json.dumps(TINY_VAE_CONFIG))
  save_file(vae_state_dict, str(root / "vae" / "diffusion_pytorch_model.safetensors"), {"format": "pt"})
  return root


def assert_same_params(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def original():
  dit = safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")
  vae = torch_pickle.load_torch_file(FIXTURES / "wanvae_tiny.pt")
  return dit, vae


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, original):
  dit, vae = original
  return write_pipeline(tmp_path_factory.mktemp("hub") / "Wan2.1-T2V-tiny-Diffusers", diffusers_dit_names(dit),
                        diffusers_vae_names(vae))


def test_the_independent_renaming_is_a_bijection_onto_diffusers_names(original):
  dit, vae = original
  assert len(diffusers_dit_names(dit)) == len(dit) and len(diffusers_vae_names(vae)) == len(vae)
  renamed = diffusers_dit_names(dit)
  assert {"blocks.1.attn2.to_out.0.weight", "blocks.0.norm2.bias", "scale_shift_table", "proj_out.weight",
          "condition_embedder.time_proj.bias", "blocks.0.ffn.net.0.proj.weight"} <= set(renamed)
  assert not any("norm3" in k for k in renamed)  # the reference's affine norm3 is diffusers' norm2
  vae_names = set(diffusers_vae_names(vae))
  assert {"decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.up_blocks.0.upsamplers.0.time_conv.bias",
          "encoder.down_blocks.2.resample.1.weight", "encoder.mid_block.attentions.0.to_qkv.weight",
          "decoder.norm_out.gamma", "quant_conv.weight", "post_quant_conv.bias"} <= vae_names


@pytest.mark.parametrize("where", ["root", "transformer", "index"])
def test_diffusers_dit_loads_as_the_original_layout(pipeline, original, where):
  path = {"root": pipeline, "transformer": pipeline / "transformer",
          "index": pipeline / "transformer" / "diffusion_pytorch_model.safetensors.index.json"}[where]
  cfg, params, source = weights.load_with_source("wan", path)  # the config comes from config.json
  # dim = heads · head_dim; the text length is the pipelines' 512, which diffusers' config omits
  assert cfg == dataclasses.replace(CFG, text_len=512)
  assert source["layout"] == "diffusers"
  assert_same_params(params, convert_wan.params_from_torch(original[0], CFG, "original"))


def test_diffusers_vae_loads_as_the_original_layout_in_both_namings(pipeline, original, tmp_path):
  reference = convert_vae.load_vae_checkpoint(FIXTURES / "wanvae_tiny.pt", VAEConfig.tiny())
  for path in (pipeline, pipeline / "vae", pipeline / "vae" / "diffusion_pytorch_model.safetensors"):
    cfg, params, source = weights.load_with_source("vae", path)
    assert cfg == VAEConfig.tiny() and source["layout"] == "diffusers"
    assert_same_params(params, reference)
  save_file(original[1], str(tmp_path / "Wan2.1_VAE.safetensors"))  # original names, as safetensors
  cfg, params, source = weights.load_with_source("vae", tmp_path / "Wan2.1_VAE.safetensors", VAEConfig.tiny())
  assert source["layout"] == "wan"
  assert_same_params(params, reference)


def test_hub_cache_folder_stands_for_its_main_snapshot(pipeline, original, tmp_path):
  files = {str(p.relative_to(pipeline)): p for p in pipeline.rglob("*") if p.is_file()}
  repo = hub_cache.add_repo(tmp_path / "hub", "Wan-AI/Wan2.1-T2V-tiny-Diffusers", files)
  assert (repo / "snapshots" / hub_cache.COMMIT / "transformer" / "config.json").is_symlink()
  _, params = weights.load_wan(repo)
  assert_same_params(params, convert_wan.params_from_torch(original[0], CFG, "original"))
  (repo / "refs" / "main").write_text("f" * 40)
  with pytest.raises(CheckpointError, match="refs/main names snapshot f+, which is not there"):
    weights.load_wan(repo)


def test_names_of_neither_layout_are_named(tmp_path, original):
  save_file({f"model.{k}": v for k, v in original[0].items()}, str(tmp_path / "wrapped.safetensors"))
  with pytest.raises(CheckpointError, match="neither the original layout .* nor the diffusers layout .*'model.' prefix"):
    weights.load_wan(tmp_path / "wrapped.safetensors", CFG)
  broken = diffusers_dit_names(original[0])
  del broken["blocks.1.attn1.norm_k.weight"]
  save_file(broken, str(tmp_path / "broken.safetensors"))
  with pytest.raises(CheckpointError, match=r"\(diffusers layout\) does not match .*missing keys: blocks.1.attn1.norm_k"):
    weights.load_wan(tmp_path / "broken.safetensors", CFG)


def test_unsupported_diffusers_configs_are_refused(tmp_path):
  for key, value, message in (("image_dim", 1280, "image-conditioned"), ("qk_norm", "rms_norm", "not supported"),
                              ("_class_name", "WanVACETransformer3DModel", "only Wan2.1 T2V")):
    path = tmp_path / f"{key}.json"
    path.write_text(json.dumps(TINY_DIFFUSERS_CONFIG | {key: value}))
    with pytest.raises(ValueError, match=message):
      WanConfig.from_json(path)


def test_diffusers_config_round_trips_and_matches_the_released_one():
  for cfg in (WanConfig.tiny(), WanConfig.t2v_1_3b(), WanConfig.t2v_14b()):
    assert WanConfig.from_diffusers_dict(cfg.to_diffusers_dict()) == cfg
  released = TINY_DIFFUSERS_CONFIG | {"attention_head_dim": 128, "ffn_dim": 8960, "freq_dim": 256, "num_attention_heads": 12,
                                      "num_layers": 30, "text_dim": 4096}
  ours = WanConfig.t2v_1_3b().to_diffusers_dict()
  assert {k: v for k, v in ours.items() if k in released and k != "_diffusers_version"} == {
      k: v for k, v in released.items() if k != "_diffusers_version"}


def test_exports_read_back_to_the_same_params(original, tmp_path):
  params = convert_wan.params_from_torch(original[0], CFG, "original")
  ema = jax.tree.map(lambda x: x + 1.0, params)
  out = tmp_path / "transformer"
  assert convert_wan.save_diffusers(params, CFG, out) == len(original[0])
  assert json.loads((out / "config.json").read_text()) == CFG.to_diffusers_dict()
  exported = safetensors_io.load_safetensors(out)
  expected = diffusers_dit_names(original[0])  # diffusers file -> params -> diffusers file
  assert exported.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(exported[name], value)
  cfg, again = weights.load_wan(out)
  assert cfg == CFG
  assert_same_params(again, params)
  pt = tmp_path / "causal_forcing.pt"
  convert_wan.save_training_checkpoint({"generator": params, "generator_ema": ema}, CFG, pt)
  raw = torch_pickle.load_torch_file(pt)  # the reference's layout: WanDiffusionWrapper names
  assert set(raw) == {"generator", "generator_ema"}
  assert set(raw["generator"]) == {f"model.{k}" for k in original[0]}
  for name, value in original[0].items():
    np.testing.assert_array_equal(raw["generator"][f"model.{name}"], value)
  assert_same_params(convert_wan.load_params(pt, CFG, "generator"), params)
  assert_same_params(convert_wan.load_params(pt, CFG, "generator_ema"), ema)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["causal_forcing.pt", "transformer"]  # no temporaries


def test_the_fake_hub_cache_is_what_huggingface_hub_reads(pipeline, tmp_path):
  """huggingface_hub (the optional `hub` extra) resolves the test's cache offline as its own."""
  hub = pytest.importorskip("huggingface_hub")
  files = {str(p.relative_to(pipeline)): p for p in pipeline.rglob("*") if p.is_file()}
  repo = hub_cache.add_repo(tmp_path / "hub", "Wan-AI/Wan2.1-T2V-tiny-Diffusers", files)
  snapshot = hub.snapshot_download("Wan-AI/Wan2.1-T2V-tiny-Diffusers", cache_dir=tmp_path / "hub",
                                   local_files_only=True)
  assert pathlib.Path(snapshot) == repo / "snapshots" / hub_cache.COMMIT
  config = hub.hf_hub_download("Wan-AI/Wan2.1-T2V-tiny-Diffusers", "transformer/config.json",
                               cache_dir=tmp_path / "hub", local_files_only=True)
  assert json.loads(pathlib.Path(config).read_text()) == TINY_DIFFUSERS_CONFIG


def test_torch_reads_the_pt_export_as_its_own(original, tmp_path):
  """Where torch is installed (it is no dependency): torch.load(weights_only=True), as the
  original's inference.py loads a checkpoint, reads the export."""
  torch = pytest.importorskip("torch")
  params = convert_wan.params_from_torch(original[0], CFG, "original")
  convert_wan.save_training_checkpoint({"generator": params, "generator_ema": params}, CFG, tmp_path / "x.pt")
  loaded = torch.load(tmp_path / "x.pt", weights_only=True, mmap=True)
  for name, value in original[0].items():
    np.testing.assert_array_equal(loaded["generator_ema"][f"model.{name}"].numpy(), value)


def test_a_config_of_another_model_is_refused(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({"_class_name": "AutoencoderKLWan", "base_dim": 96}))
  with pytest.raises(ValueError, match="describes AutoencoderKLWan, neither a Wan2.1 WanModel nor a diffusers"):
    WanConfig.from_json(path)


def test_vae_exports_read_back_to_the_same_params(original, tmp_path):
  cfg = VAEConfig.tiny()
  params = convert_vae.load_vae_checkpoint(FIXTURES / "wanvae_tiny.pt", cfg)
  exported = convert_vae.vae_params_to_torch(params, cfg)  # the original names and layouts
  assert exported.keys() == original[1].keys()
  for name, value in original[1].items():
    np.testing.assert_array_equal(exported[name], value)
  assert convert_vae.save_diffusers(params, cfg, tmp_path / "vae") == len(original[1])
  written = json.loads((tmp_path / "vae" / "config.json").read_text())
  assert {k: v for k, v in written.items() if k not in ("_diffusers_version", "latents_mean", "latents_std")} == {
      k: v for k, v in TINY_VAE_CONFIG.items() if k not in ("_diffusers_version", "latents_mean", "latents_std")}
  expected = diffusers_vae_names(original[1])
  ours = safetensors_io.load_safetensors(tmp_path / "vae")
  assert ours.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(ours[name], value)
  again_cfg, again = weights.load("vae", tmp_path / "vae")
  assert again_cfg == cfg
  assert_same_params(again, params)
