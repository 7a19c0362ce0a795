"""`python -m cf_jax.sample`: stream videos from a few-step causal generator with a KV cache.

Examples:
  # chunk-wise Causal Forcing, 4 steps, text embeddings from `python -m cf_jax.encode_prompts`
  python -m cf_jax.sample --checkpoint ckpt/cf_chunkwise --prompts prompts.txt \
      --embeddings embeds/ --frames_per_block 3 --steps 4 --vae_checkpoint Wan2.1_VAE.pth --out out/
  # frame-wise image-to-video
  python -m cf_jax.sample --checkpoint ckpt/cf_framewise_ema --prompt "a cat surfing" \
      --embeddings cat.npy --image cat.png --frames_per_block 1 --vae_checkpoint Wan2.1_VAE.pth --out out/
  # smoke test of a tiny model with random text embeddings
  python -m cf_jax.sample --checkpoint runs/wan_tiny --dry_run --prompt "test" --num_frames 6 \
      --height 64 --width 64 --out runs/samples

`--num_frames` counts latent frames (21 latent frames decode to the 81 video frames of the
released models). Writes `<i>_latents.npy` per prompt and, with a VAE, `<i>.mp4` and `<i>.gif`.
"""
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from cf_jax import video_io
from cf_jax import weights
from cf_jax.convert.errors import CheckpointError
from cf_jax.data import records
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import streaming
from cf_jax.models import vae as vae_lib
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from cf_jax.text import encoder as text_encoder

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted generator (python -m cf_jax.convert), "
                                  "or PyTorch weights together with --model.", required=True)
_MODEL = flags.DEFINE_string("model", None, "Model preset for PyTorch weights (t2v_1_3b, tiny).")
_ENTRY = flags.DEFINE_string("entry", None, "Entry of a .pt checkpoint (generator, generator_ema).")
_PROMPT = flags.DEFINE_string("prompt", None, "One prompt.")
_PROMPTS = flags.DEFINE_string("prompts", None, "A text file, one prompt per line.")
_EMBEDDINGS = flags.DEFINE_string("embeddings", None, "Precomputed text embeddings: a dataset written by "
                                  "python -m cf_jax.encode_prompts for the same prompts, or a .npy [N, L, D].")
_T5 = flags.DEFINE_string("t5_checkpoint", None, "Encode the prompts here: converted umT5 or "
                          "models_t5_umt5-xxl-enc-bf16.pth (with --tokenizer).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the google/umt5-xxl spiece.model.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Random text embeddings (smoke test; no text encoder).")
_IMAGE = flags.DEFINE_string("image", None, "Image-to-video: the first frame (needs --vae_checkpoint, "
                             "frame-wise models).")
_VAE = flags.DEFINE_string("vae_checkpoint", None, "Converted VAE or Wan2.1_VAE.pth (writes MP4 and GIF).")
_VAE_MODEL = flags.DEFINE_enum("vae_model", "wan21", ["wan21", "tiny"], "VAE preset (for a .pth).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 21, "Latent frames to generate (21 ↔ 81 video frames).")
_HEIGHT = flags.DEFINE_integer("height", 480, "Video height in pixels.")
_WIDTH = flags.DEFINE_integer("width", 832, "Video width in pixels.")
_FRAMES_PER_BLOCK = flags.DEFINE_integer("frames_per_block", 3, "1 frame-wise, 3 chunk-wise.")
_STEPS = flags.DEFINE_enum("steps", "4", ["4", "2", "1"], "Denoising steps per block.")
_FIRST_BLOCK_STEPS = flags.DEFINE_enum("first_block_steps", None, ["4", "2", "1"],
                                       "Separate step count for the first block (Causal Forcing++ 1/2-step).")
_LOCAL_ATTN_FRAMES = flags.DEFINE_integer("local_attn_frames", -1, "Rolling KV window in latent frames "
                                          "(-1: the whole video).")
_SINK_FRAMES = flags.DEFINE_integer("sink_frames", 0, "Frames a rolling window never evicts.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Prompts generated together.")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)

VAE_SPATIAL = 8
LATENT_CHANNELS = 16


def read_prompts() -> list[str]:
  if bool(_PROMPT.value) == bool(_PROMPTS.value):
    raise ValueError("give exactly one of --prompt or --prompts")
  if _PROMPT.value is not None:
    prompts = [_PROMPT.value]
  else:
    path = pathlib.Path(_PROMPTS.value)
    if not path.is_file():
      raise ValueError(f"--prompts file {path} does not exist")
    prompts = path.read_text(encoding="utf-8").splitlines()
  for i, p in enumerate(prompts):
    if not p.strip():
      raise ValueError(f"prompt {i + 1} is empty; remove blank lines from the prompt file")
  return prompts


def text_embeddings(prompts: list[str], cfg: WanConfig) -> np.ndarray:  # [N, L, text_dim]
  if _DRY_RUN.value:
    rng = np.random.default_rng(_SEED.value)
    return rng.standard_normal((len(prompts), cfg.text_len, cfg.text_dim)).astype(np.float32)
  if _T5.value:
    if not _TOKENIZER.value:
      raise ValueError("--t5_checkpoint needs --tokenizer (the google/umt5-xxl directory)")
    return text_encoder.TextEncoder.load(_T5.value, _TOKENIZER.value)(prompts)[0]
  if not _EMBEDDINGS.value:
    raise ValueError("pass --t5_checkpoint and --tokenizer, --embeddings (from python -m cf_jax.encode_prompts), "
                     "or --dry_run")
  if pathlib.Path(_EMBEDDINGS.value).is_dir():
    rows = list(records.iterate(_EMBEDDINGS.value))
    if [r["prompt"] for r in rows] != prompts:
      raise ValueError(f"--embeddings {_EMBEDDINGS.value} was encoded from other prompts than the ones given")
    return np.stack([r["prompt_embeds"] for r in rows]).astype(np.float32)
  embeds = np.load(_EMBEDDINGS.value)
  if embeds.ndim != 3 or embeds.shape[0] != len(prompts) or embeds.shape[2] != cfg.text_dim:
    raise ValueError(f"--embeddings {_EMBEDDINGS.value} has shape {embeds.shape}; expected "
                     f"[{len(prompts)} prompts, ≤{cfg.text_len}, {cfg.text_dim}]")
  return embeds.astype(np.float32)


def load_generator() -> tuple[WanConfig, dict]:
  preset = WanConfig.from_preset(_MODEL.value) if _MODEL.value else None
  return weights.load_wan(_CHECKPOINT.value, preset, _ENTRY.value)


def load_vae():
  if not _VAE.value:
    return None
  preset = None if weights.is_params_checkpoint(_VAE.value) else weights.NETWORKS["vae"].preset(_VAE_MODEL.value)
  return weights.load("vae", _VAE.value, preset)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  try:
    run()
  except (CheckpointError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def run():
  prompts = read_prompts()
  cfg, params = load_generator()
  embeds = text_embeddings(prompts, cfg)
  if _HEIGHT.value % (VAE_SPATIAL * 2) or _WIDTH.value % (VAE_SPATIAL * 2):
    raise ValueError(f"--height/--width must be multiples of {VAE_SPATIAL * 2} (VAE ×8, patch ×2)")
  if _IMAGE.value and (not _VAE.value or _FRAMES_PER_BLOCK.value != 1):
    raise ValueError("--image needs --vae_checkpoint and a frame-wise model (--frames_per_block 1)")
  vae = load_vae()
  dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  generated = _NUM_FRAMES.value - (1 if _IMAGE.value else 0)
  capacity = _NUM_FRAMES.value if _LOCAL_ATTN_FRAMES.value == -1 else _LOCAL_ATTN_FRAMES.value
  config = streaming.FewStepConfig.from_step_count(
      _FRAMES_PER_BLOCK.value, int(_STEPS.value),
      int(_FIRST_BLOCK_STEPS.value) if _FIRST_BLOCK_STEPS.value else None,
      capacity_frames=capacity, sink_frames=_SINK_FRAMES.value,
  )
  sampler = streaming.StreamingSampler(wan.WanModel(cfg, dtype=dtype, param_dtype=dtype), params, config)
  latent_hw = (_HEIGHT.value // VAE_SPATIAL, _WIDTH.value // VAE_SPATIAL)
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  key = jax.random.key(_SEED.value)
  image_latent = None
  if _IMAGE.value:
    image = video_io.read_image(_IMAGE.value, _HEIGHT.value, _WIDTH.value)[None]  # [1, 1, H, W, 3]
    image_latent = vae_lib.encode(vae[1], jnp.asarray(image), vae[0]).astype(dtype)

  timings = []
  for first in range(0, len(prompts), _BATCH_SIZE.value):
    batch = range(first, min(first + _BATCH_SIZE.value, len(prompts)))
    key, noise_key, step_key = jax.random.split(key, 3)
    noise = noise_lib.normal(noise_key, (len(batch), generated, *latent_hw, LATENT_CHANNELS), dtype)
    state = sampler.start(jnp.asarray(embeds[batch.start : batch.stop]), latent_hw)
    blocks = []
    if image_latent is not None:
      state = sampler.condition_on_frames(state, jnp.repeat(image_latent, len(batch), axis=0))
      blocks.append(jnp.repeat(image_latent, len(batch), axis=0))
    start = time.perf_counter()
    progress = tqdm.tqdm(total=generated, desc=f"prompts {batch.start + 1}-{batch.stop}", unit="frame")
    for block, state in sampler.stream(state, noise, step_key):
      blocks.append(block)
      progress.update(block.shape[1])
    progress.close()
    latents = np.asarray(jnp.concatenate(blocks, axis=1).astype(jnp.float32))  # [B, F, h, w, 16]
    timings.append(time.perf_counter() - start)
    for row, i in enumerate(batch):
      np.save(out / f"{i:04d}_latents.npy", latents[row])
      if vae is not None:
        video = np.asarray(vae_lib.decode(vae[1], jnp.asarray(latents[row : row + 1]), vae[0]))[0]
        video_io.write_mp4(video, out / f"{i:04d}.mp4")
        video_io.write_gif(video, out / f"{i:04d}.gif")
  (out / "prompts.json").write_text(json.dumps(prompts, ensure_ascii=False, indent=1))
  print(f"wrote {len(prompts)} videos of {_NUM_FRAMES.value} latent frames to {out} "
        f"(first batch {timings[0]:.1f} s incl. compilation, later {np.mean(timings[1:] or [np.nan]):.1f} s)")


if __name__ == "__main__":
  app.run(main)
