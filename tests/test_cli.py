"""The command-line tools end to end, as a user runs them (subprocesses, CPU)."""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

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
  assert "Wan DiT" in result.stdout
  return out


def test_convert_then_export_round_trips_to_the_original_names(tiny_checkpoint, tmp_path):
  exported = tmp_path / "export.safetensors"
  result = run("cf_jax.convert", "--reverse", "--src", str(tiny_checkpoint), "--out", str(exported))
  assert result.returncode == 0, result.stderr
  from cf_jax.convert import torch_pickle

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
