"""The command-line tools end to end, as a user runs them (subprocesses, CPU)."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from cf_jax import weights
from cf_jax.diffusion import sampling_setup
from cf_jax.convert import torch_pickle
from cf_jax.convert import vae as convert_vae
from cf_jax.models import vae
from tests.conftest import FIXTURES

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("ckpt") / "wan_tiny"
  result = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.pt"), "--entry", "generator_ema",
               "--model", "tiny", "--out", str(out))
  assert result.returncode == 0, result.stderr
  assert "wan_dit with 589,248 parameters" in result.stdout
  return out


def test_convert_then_export_round_trips_to_the_original_names(tiny_checkpoint, tmp_path):
  exported = tmp_path / "export.safetensors"
  result = run("cf_jax.convert", "--reverse", "--src", str(tiny_checkpoint), "--out", str(exported))
  assert result.returncode == 0, result.stderr
  reference = torch_pickle.load_torch_file(FIXTURES / "wan_tiny.pt")["generator_ema"]
  ours = load_file(str(exported))
  assert {f"model.{k}" for k in ours} == set(reference)
  for name, value in ours.items():
    np.testing.assert_array_equal(value, reference[f"model.{name}"])


def test_convert_refuses_to_overwrite_and_reports_bad_input(tiny_checkpoint, tmp_path):
  again = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.safetensors"), "--model", "tiny",
              "--out", str(tiny_checkpoint))
  assert again.returncode != 0 and "already exists" in again.stderr
  wrong_model = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.safetensors"), "--model", "t2v_1_3b",
                    "--out", str(tmp_path / "x"))
  assert wrong_model.returncode != 0
  assert "shape mismatches" in wrong_model.stderr and "Traceback" not in wrong_model.stderr
  assert not (tmp_path / "x").exists()  # nothing half-written


def test_sample_dry_run_writes_latents(tiny_checkpoint, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red ball\na blue cube\na green cone\n")
  result = run("cf_jax.sample", "--checkpoint", str(tiny_checkpoint), "--prompts", str(prompts), "--dry_run",
               "--num_frames", "6", "--height", "64", "--width", "64", "--frames_per_block", "3",
               "--batch_size", "2", "--dtype", "float32", "--out", str(tmp_path / "out"))
  assert result.returncode == 0, result.stderr
  for i in range(3):
    latents = np.load(tmp_path / "out" / f"{i:04d}_latents.npy")
    assert latents.shape == (6, 8, 8, 16) and np.isfinite(latents).all()


def test_sample_rejects_an_empty_prompt(tiny_checkpoint, tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("a red ball\n\n")
  result = run("cf_jax.sample", "--checkpoint", str(tiny_checkpoint), "--prompts", str(prompts), "--dry_run",
               "--out", str(tmp_path / "out"))
  assert result.returncode != 0 and "prompt 2 is empty" in result.stderr


def test_sample_with_vae_writes_video_and_image_to_video_keeps_the_image(tiny_checkpoint, tmp_path):
  image = tmp_path / "first.png"
  pixels = np.zeros((64, 64, 3), np.uint8)
  pixels[16:48, 16:48] = (255, 40, 40)
  Image.fromarray(pixels).save(image)
  converted_vae = tmp_path / "vae"
  result = run("cf_jax.convert", "--kind", "vae", "--src", str(FIXTURES / "wanvae_tiny.pt"), "--model", "tiny",
               "--out", str(converted_vae))
  assert result.returncode == 0 and "wan_vae with 924,491 parameters" in result.stdout, result.stderr
  common = ["--checkpoint", str(tiny_checkpoint), "--prompt", "a red square", "--dry_run", "--num_frames", "3",
            "--height", "64", "--width", "64", "--frames_per_block", "1", "--dtype", "float32"]
  t2v = run("cf_jax.sample", *common, "--vae_checkpoint", str(converted_vae), "--out", str(tmp_path / "t2v"))
  assert t2v.returncode == 0, t2v.stderr
  i2v = run("cf_jax.sample", *common, "--vae_checkpoint", str(FIXTURES / "wanvae_tiny.pt"), "--vae_model", "tiny",
            "--image", str(image), "--out", str(tmp_path / "i2v"))
  assert i2v.returncode == 0, i2v.stderr
  for out in ("t2v", "i2v"):
    gif = Image.open(tmp_path / out / "0000.gif")
    assert gif.n_frames == 9 and gif.size == (64, 64)  # 3 latent frames -> 1 + 4·2 video frames
    assert (tmp_path / out / "0000.mp4").stat().st_size > 0
  # Image-to-video: latent frame 0 is the encoded image
  # (the tiny random VAE is no autoencoder, so compare with its own encoding of the image).
  cfg = vae.VAEConfig.tiny()
  vae_params = convert_vae.load_vae_checkpoint(FIXTURES / "wanvae_tiny.pt", cfg)
  expected = vae.encode(vae_params, jnp.asarray(pixels / 127.5 - 1.0, jnp.float32)[None, None], cfg)
  latents = np.load(tmp_path / "i2v" / "0000_latents.npy")
  np.testing.assert_allclose(latents[0], np.asarray(expected)[0, 0], atol=1e-2)


def test_convert_of_a_pt_says_which_entry_it_took(tiny_checkpoint, tmp_path):
  result = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.pt"), "--model", "tiny", "--out", str(tmp_path / "c"))
  assert result.returncode == 0, result.stderr
  assert "took entry 'generator' of generator, generator_ema (the default; --entry picks another)" in result.stdout
  assert "sampling: not recorded" in result.stdout


def latents_of(checkpoint, out, *flags):
  result = run("cf_jax.sample", "--checkpoint", str(checkpoint), "--prompt", "a red ball", "--dry_run",
               "--num_frames", "3", "--height", "64", "--width", "64", "--dtype", "float32", "--out", str(out), *flags)
  assert result.returncode == 0, result.stderr
  return np.load(out / "0000_latents.npy"), result.stderr


def test_sample_follows_the_recorded_setup_and_flags_override_it(tmp_path):
  cfpp = tmp_path / "cfpp_1step"
  result = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.pt"), "--preset", "cfpp_1step", "--model", "tiny",
               "--out", str(cfpp))
  assert result.returncode == 0, result.stderr
  assert "took entry 'generator_ema' of generator, generator_ema (the --preset" in result.stdout
  assert "sampling: frame-wise, steps 1000 (first block 1000,750,500,250), shift 5" in result.stdout
  recorded, notes = latents_of(cfpp, tmp_path / "recorded")
  assert "note" not in notes
  explicit, notes = latents_of(cfpp, tmp_path / "explicit", "--frames_per_block", "1", "--steps", "1",
                               "--first_block_steps", "4")
  assert "note" not in notes  # the flags say what the checkpoint says
  np.testing.assert_array_equal(recorded, explicit)
  chunkwise, notes = latents_of(cfpp, tmp_path / "chunkwise", "--frames_per_block", "3", "--steps", "4")
  assert "note: the flags override the checkpoint's sampling setup: frame-wise, steps 1000" in notes
  assert not np.allclose(chunkwise, recorded)


def test_reverse_to_diffusers_and_pt_and_back_is_the_identity(tiny_checkpoint, tmp_path):
  diffusers = tmp_path / "transformer"
  result = run("cf_jax.convert", "--reverse", "--format", "diffusers", "--src", str(tiny_checkpoint),
               "--out", str(diffusers))
  assert result.returncode == 0, result.stderr
  assert json.loads((diffusers / "config.json").read_text())["num_attention_heads"] == 4
  pt = tmp_path / "causal_forcing.pt"
  result = run("cf_jax.convert", "--reverse", "--format", "pt", "--src", str(tiny_checkpoint), "--out", str(pt))
  assert result.returncode == 0 and "entries generator and generator_ema" in result.stdout, result.stderr
  reference = torch_pickle.load_torch_file(FIXTURES / "wan_tiny.pt")["generator_ema"]
  ours = torch_pickle.load_torch_file(pt)
  for entry in ("generator", "generator_ema"):  # named as the reference's inference.py loads them
    assert ours[entry].keys() == reference.keys()
    for name, value in reference.items():
      np.testing.assert_array_equal(ours[entry][name], value)
  back = tmp_path / "back"  # no --model: the config.json of the diffusers folder
  result = run("cf_jax.convert", "--src", str(diffusers), "--out", str(back))
  assert result.returncode == 0 and "from the diffusers layout" in result.stdout, result.stderr
  _, original = weights.load_wan(tiny_checkpoint)
  _, again = weights.load_wan(back)
  for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  again = run("cf_jax.convert", "--reverse", "--format", "pt", "--src", str(tiny_checkpoint), "--out", str(pt))
  assert again.returncode == 1 and "already exists" in again.stderr


def test_convert_records_an_explicit_setup_and_exports_a_separate_ema(tiny_checkpoint, tmp_path):
  mine = tmp_path / "mine"
  result = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.pt"), "--entry", "generator", "--model", "tiny",
               "--frames_per_block", "1", "--denoising_steps", "1000,500",
               "--first_block_denoising_steps", "1000,750,500,250", "--out", str(mine))
  assert result.returncode == 0, result.stderr
  assert "took entry" not in result.stdout  # it was named
  recorded = sampling_setup.SamplingSetup.from_info(weights.read_info(mine)["sampling"])
  assert recorded == sampling_setup.RELEASED["cfpp_2step"].setup  # configs/causal_forcing_dmd_framewise_2step.yaml
  half = run("cf_jax.convert", "--src", str(FIXTURES / "wan_tiny.pt"), "--model", "tiny", "--frames_per_block", "1",
             "--out", str(tmp_path / "half"))
  assert half.returncode == 1 and "both --frames_per_block and --denoising_steps" in half.stderr
  assert not (tmp_path / "half").exists()
  pt = tmp_path / "both.pt"  # generator from `mine` (the fixture's generator), EMA from tiny_checkpoint
  result = run("cf_jax.convert", "--reverse", "--format", "pt", "--src", str(mine), "--ema_src", str(tiny_checkpoint),
               "--out", str(pt))
  assert result.returncode == 0, result.stderr
  ours, reference = torch_pickle.load_torch_file(pt), torch_pickle.load_torch_file(FIXTURES / "wan_tiny.pt")
  for entry in ("generator", "generator_ema"):
    for name, value in reference[entry].items():
      np.testing.assert_array_equal(ours[entry][name], value)


def test_vae_reverse_to_both_namings_and_back(tmp_path):
  converted = tmp_path / "vae"
  result = run("cf_jax.convert", "--kind", "vae", "--src", str(FIXTURES / "wanvae_tiny.pt"), "--model", "tiny",
               "--out", str(converted))
  assert result.returncode == 0, result.stderr
  for fmt, out in (("diffusers", tmp_path / "export" / "vae"), ("safetensors", tmp_path / "Wan2.1_VAE.safetensors")):
    result = run("cf_jax.convert", "--reverse", "--kind", "vae", "--format", fmt, "--src", str(converted),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
  reference = torch_pickle.load_torch_file(FIXTURES / "wanvae_tiny.pt")
  ours = load_file(str(tmp_path / "Wan2.1_VAE.safetensors"))
  assert ours.keys() == reference.keys()
  for name, value in reference.items():
    np.testing.assert_array_equal(ours[name], value)
  _, original = weights.load("vae", converted)
  _, again = weights.load("vae", tmp_path / "export" / "vae")  # no preset: its config.json
  for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  pt = run("cf_jax.convert", "--reverse", "--kind", "vae", "--format", "pt", "--src", str(converted),
           "--out", str(tmp_path / "vae.pt"))
  assert pt.returncode == 1 and "export the VAE as safetensors or diffusers" in pt.stderr
