"""Bad input, as a user types it: one line `error: ...` on stderr, exit status 1, nothing
half-written. Every input is checked before weights load, so each subprocess exits in seconds."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from cf_jax.data import records
from cf_jax.errors import UserError
from cf_jax.training import config as base

ROOT = pathlib.Path(__file__).parent.parent
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
  """`python -m <args>`, or `python -c <code> <args>`, from the repository root."""
  command = ["-c", code, *args] if code else ["-m", *args]
  return subprocess.run([sys.executable, *command], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def train(workdir: pathlib.Path, *overrides: str, config: str = "configs/dmd_chunkwise.py:tiny"):
  return run("cf_jax.train", "--config", config, "--workdir", str(workdir), *overrides)


def test_config_key_typo_names_the_closest_key(tmp_path):
  one_line_error(train(tmp_path / "run", "--config.num_stepz=3"),
                 "--config.num_stepz", "no key num_stepz", "did you mean num_steps?")
  one_line_error(train(tmp_path / "run", "--config.data.pth", "x"), "no key data.pth",
                 "did you mean data.path?")
  assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path):
  one_line_error(train(tmp_path / "run", config="configs/nope.py"), "configs/nope.py does not exist")
  one_line_error(run("cf_jax.train", "--workdir", str(tmp_path / "run")), "--config is required")
  assert not (tmp_path / "run").exists()


def test_variant_typo_is_rejected_naming_the_valid_variants(tmp_path):
  one_line_error(train(tmp_path / "run", config="configs/dmd_chunkwise.py:tinyy"),
                 "configs/dmd_chunkwise.py", "unknown config variant 'tinyy'", ":tiny")
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_file_rejects_an_unknown_variant(path):
  valid = "smoke" if path.stem in ("toy", "injectivity") else "tiny"
  with pytest.raises(UserError, match=f"{path.name}: unknown config variant 'tinyy'.*:{valid}"):
    base.from_file(path, "tinyy")


def test_corrupt_shard_is_named_with_what_to_do(tmp_path):
  data = tmp_path / "prompt_embeds"
  embeds = np.zeros((16, 64), np.float32)  # the tiny configs' text_len x text_dim
  records.write_sharded(data, list(range(16)), lambda batch, first: [
      {"index": first + i, "prompt": "p", "prompt_embeds": embeds} for i in range(len(batch))], 8, 8, "prompts")
  shard = data / records.shard_name(1, 2)
  shard.write_bytes(shard.read_bytes()[:1000])  # a shard cut short: its footer is gone
  line = one_line_error(train(tmp_path / "run", "--config.data.kind=records", f"--config.data.path={data}"),
                        str(shard), "corrupt", "delete it and rerun")
  assert "00000" not in line
  assert not (tmp_path / "run").exists()


def test_unwritable_workdir_leaves_nothing(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  one_line_error(train(blocker / "run"), f"--workdir {blocker / 'run'} is not writable")
  assert blocker.read_text() == ""


def test_full_workdir_fails_before_any_checkpoint(tmp_path):
  # The disk reports 1 kB free; the tiny DMD state needs megabytes.
  full_disk = ("import runpy, shutil, sys, types; "
               "shutil.disk_usage = lambda path: types.SimpleNamespace(total=10**12, used=10**12, free=1000); "
               "sys.argv[0] = 'cf_jax.train'; runpy.run_module('cf_jax.train', run_name='__main__')")
  workdir = tmp_path / "run"
  one_line_error(run("--config", "configs/dmd_chunkwise.py:tiny", "--workdir", str(workdir), code=full_disk),
                 "0.00 GiB free", "a checkpoint and the exports needs", "choose another --workdir")
  assert not workdir.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_without_wandb_installed(tmp_path):
  result = train(tmp_path / "run", "--config.wandb.enabled=true")
  one_line_error(result, "wandb is not installed", "pip install wandb")
  assert not (tmp_path / "run").exists()


def sample(out: pathlib.Path, *args: str):
  # The checkpoint is never read: every check below comes first.
  return run("cf_jax.sample", "--checkpoint", str(out.parent / "no_checkpoint"), "--dry_run", "--out", str(out),
             *args)


def test_sample_with_an_empty_prompts_file(tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("")
  one_line_error(sample(tmp_path / "out", "--prompts", str(prompts)), f"--prompts file {prompts} is empty")
  assert not (tmp_path / "out").exists()


def test_sample_with_an_empty_prompt(tmp_path):
  one_line_error(sample(tmp_path / "out", "--prompt", ""), "--prompt is empty")
  assert not (tmp_path / "out").exists()


def test_sample_frames_that_do_not_split_into_blocks(tmp_path):
  one_line_error(sample(tmp_path / "out", "--prompt", "a cat", "--num_frames", "5", "--frames_per_block", "3"),
                 "--num_frames 5", "the 3 frames per block")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (("cf_jax.convert", "--src", "/nonexistent/model.safetensors", "--model", "tiny", "--out", "{tmp}/out"),
     "/nonexistent/model.safetensors does not exist"),
    (("cf_jax.encode_prompts", "--prompts", "{tmp}/none.txt", "--out", "{tmp}/out", "--t5_checkpoint", "x",
      "--tokenizer", "y"), "none.txt does not exist"),
    (("cf_jax.encode_videos", "--videos", "{tmp}/none", "--out", "{tmp}/out", "--vae_checkpoint", "x"),
     "is not a directory"),
    (("cf_jax.generate_ode_data", "--config", "configs/ode_data_chunkwise.py:tiny", "--workdir", "{tmp}/out",
      "--config.guidance_scal=1"), "did you mean guidance_scale?"),
    (("cf_jax.experiments.injectivity", "--config", "configs/injectivity.py:smok", "--workdir", "{tmp}/out"),
     "unknown config variant 'smok'"),
], ids=["convert", "encode_prompts", "encode_videos", "generate_ode_data", "injectivity"])
def test_every_cli_reports_bad_input_in_one_line(tmp_path, args, fragment):
  one_line_error(run(*(a.format(tmp=tmp_path) for a in args)), fragment)
  assert not (tmp_path / "out").exists()


def test_other_exceptions_keep_their_traceback():
  bug = ("from cf_jax import cli\n"
         "def main(argv):\n"
         "  raise KeyError('a bug')\n"
         "cli.run(main)\n")
  result = run(code=bug)
  assert result.returncode != 0 and "Traceback" in result.stderr and "KeyError: 'a bug'" in result.stderr


def test_a_key_the_stage_does_not_read_is_not_in_its_config(tmp_path):
  # `causal` is stage 1's; the critic's optimizer is DMD's: on other stages they are unknown keys.
  one_line_error(train(tmp_path / "run", "--config.causal=False"), "dmd_chunkwise.py:tiny has no key causal")
  one_line_error(train(tmp_path / "run", "--config.critic_optimizer.lr=1e-3",
                       config="configs/causal_ode_chunkwise.py:tiny"), "has no key critic_optimizer")
  assert not (tmp_path / "run").exists()
