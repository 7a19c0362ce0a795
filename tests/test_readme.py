"""Every command of the README's "From released weights to a video" section, run as written at
tiny scale: the downloads are stood in for by tiny fixtures laid out where `hf download` puts them
(`--local-dir`, or the huggingface_hub cache), and each cf_jax command gets the flags that shrink
it to the tiny models (nothing else is changed)."""
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from cf_jax import weights
from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert import wan as convert_wan
from cf_jax.models.config import WanConfig
from tests import hub_cache
from tests.conftest import FIXTURES
from tests.test_cli import ENV
from tests.test_diffusers import diffusers_dit_names, diffusers_vae_names, write_pipeline
from tests.test_tokenizer import build_tokenizer

README = pathlib.Path(__file__).parent.parent / "README.md"
SECTION = "## From released weights to a video"
HUB = "~/.cache/huggingface/hub"

# Tiny stand-ins for the released files (the fixtures' .pt holds generator and generator_ema).
STAND_INS = {
    ("Wan-AI/Wan2.1-T2V-1.3B", "models_t5_umt5-xxl-enc-bf16.pth"): FIXTURES / "umt5_tiny.pt",
    ("Wan-AI/Wan2.1-T2V-1.3B", "Wan2.1_VAE.pth"): FIXTURES / "wanvae_tiny.pt",
    ("zhuhz22/Causal-Forcing", "chunkwise/causal_forcing.pt"): FIXTURES / "wan_tiny.pt",
    ("zhuhz22/Causal-Forcing", "framewise/causal_forcing.pt"): FIXTURES / "wan_tiny.pt",
    ("zhuhz22/Causal-Forcing", "causal-forcing++/framewise-1step.pt"): FIXTURES / "wan_tiny.pt",
}
# What shrinks each tool to the tiny models.
TINY_FLAGS = {
    "cf_jax.convert": ["--model", "tiny"],
    "cf_jax.encode_prompts": ["--model", "tiny", "--seq_len", "16", "--dtype", "float32"],
    "cf_jax.sample": ["--num_frames", "3", "--height", "64", "--width", "64", "--dtype", "float32"],
}


def section_commands() -> list[list[str]]:
  text = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      if line.strip() and not line.lstrip().startswith("#"):
        commands.append(shlex.split(line))
  return commands


def download(args: list[str], cwd: pathlib.Path, cache: pathlib.Path, tokenizer: pathlib.Path):
  """What `hf download REPO FILES... [--local-dir DIR]` leaves, from the stand-ins."""
  repo, rest = args[2], args[3:]
  if "--local-dir" not in rest:  # the diffusers pipeline, into the hub cache
    staging = write_pipeline(cache.parent / "staging", diffusers_dit_names(
        safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")),
        diffusers_vae_names(torch_pickle.load_torch_file(FIXTURES / "wanvae_tiny.pt")))
    hub_cache.add_repo(cache, repo, {str(p.relative_to(staging)): p for p in staging.rglob("*") if p.is_file()})
    return
  local_dir = cwd / rest[rest.index("--local-dir") + 1]
  for name in rest[: rest.index("--local-dir")]:
    source = tokenizer / "spiece.model" if name.endswith("spiece.model") else STAND_INS[(repo, name)]
    (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
    (local_dir / name).write_bytes(source.read_bytes())


def test_readme_commands_from_released_weights_to_a_video(tmp_path):
  cwd, cache = tmp_path / "work", tmp_path / "cache" / "hub"
  cwd.mkdir()
  tokenizer = build_tokenizer(tmp_path / "tokenizer")
  (cwd / "prompt.txt").write_text("a corgi running on the beach\n")
  pixels = np.zeros((64, 64, 3), np.uint8)
  pixels[16:48, 16:48] = (255, 40, 40)
  Image.fromarray(pixels).save(cwd / "first_frame.png")
  commands = section_commands()
  assert sum(c[:2] == ["hf", "download"] for c in commands) == 3
  printed = {}
  for command in commands:
    if command[:2] == ["hf", "download"]:
      download(command, cwd, cache, tokenizer)
      continue
    assert command[:2] == ["python", "-m"], command
    args = [a.replace(HUB, str(cache)) for a in command[2:]]
    if "--model" in args:  # a named full-size preset becomes the tiny one
      args[args.index("--model") + 1] = "tiny"
    elif args[0] != "cf_jax.convert" or "--preset" in args:
      args += TINY_FLAGS[args[0]]
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=ENV,
                            timeout=600)
    assert result.returncode == 0, (command, result.stderr)
    assert "note:" not in result.stderr, result.stderr  # nothing needs a layout flag
    printed[args[args.index("--out") + 1]] = result.stdout

  assert "took entry 'generator' of generator, generator_ema" in printed["ckpt/cf_chunkwise"]
  assert "took entry 'generator_ema'" in printed["ckpt/cf_framewise"]
  for out, setup in (("out/chunkwise", "chunk-wise, steps 1000,750,500,250, shift 5"),
                     ("out/framewise", "frame-wise, steps 1000,750,500,250, shift 5"),
                     ("out/cfpp_1step", "frame-wise, steps 1000 (first block 1000,750,500,250), shift 5"),
                     ("out/i2v", "frame-wise, steps 1000,750,500,250, shift 5")):
    assert f"({setup})" in printed[out]
    assert Image.open(cwd / out / "0000.gif").n_frames == 9 and (cwd / out / "0000.mp4").stat().st_size > 0
  # From the hub cache: the diffusers DiT and VAE are the original layout's weights.
  cfg, params = weights.load_wan(cwd / "ckpt" / "wan_1_3b")
  assert cfg.dim == 128 and cfg.num_layers == 2
  expected = convert_wan.load_params(FIXTURES / "wan_tiny.safetensors", WanConfig.tiny())
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(weights.load("vae", cwd / "ckpt" / "vae_diffusers")[1]),
                  jax.tree.leaves(weights.load("vae", cwd / "ckpt" / "vae")[1])):
    np.testing.assert_array_equal(a, b)
