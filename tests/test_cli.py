"""The command-line tools end to end, as a user runs them (subprocesses, CPU)."""
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

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
