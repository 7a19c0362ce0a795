"""`python -m cf_jax.sample`: stream videos from a few-step causal generator with a KV cache.

A converted or exported checkpoint records how it samples (frames per block, step lists, shift;
`python -m cf_jax.convert --preset ...`), so no layout flags are needed; --frames_per_block,
--steps and --first_block_steps override it, with a note.

Examples:
  # chunk-wise Causal Forcing, text embeddings from `python -m cf_jax.encode_prompts`
  python -m cf_jax.sample --checkpoint ckpt/cf_chunkwise --prompts prompts.txt \
      --embeddings embeds/ --vae_checkpoint ckpt/vae --out out/
  # frame-wise image-to-video
  python -m cf_jax.sample --checkpoint ckpt/cf_framewise --prompt "a cat surfing" \
      --embeddings cat.npy --image cat.png --vae_checkpoint ckpt/vae --out out/
  # smoke test of the repository's tiny fixture model with random text embeddings
  python -m cf_jax.convert --src tests/fixtures/wan_tiny.pt --preset chunkwise --model tiny --out ckpt/wan_tiny
  python -m cf_jax.sample --checkpoint ckpt/wan_tiny --dry_run --prompt "test" --num_frames 6 \
      --height 64 --width 64 --dtype float32 --out out/tiny

`--num_frames` counts latent frames (21 latent frames decode to the 81 video frames of the
released models). Writes `<i>_latents.npy` per prompt and, with a VAE, `<i>.mp4` and `<i>.gif`.
"""
import dataclasses
import json
import pathlib
import sys
import time

from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from cf_jax import checkpoint
from cf_jax import cli
from cf_jax import video_io
from cf_jax import weights
from cf_jax.data import records
from cf_jax.diffusion import sampling_setup
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import streaming
from cf_jax.errors import UserError
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
_FRAMES_PER_BLOCK = flags.DEFINE_integer("frames_per_block", None, "1 frame-wise, 3 chunk-wise (default: the "
                                         "checkpoint's sampling setup).")
_STEPS = flags.DEFINE_enum("steps", None, ["4", "2", "1"], "Denoising steps per block, the released lists "
                           "(default: the checkpoint's).")
_FIRST_BLOCK_STEPS = flags.DEFINE_enum("first_block_steps", None, ["4", "2", "1"],
                                       "Separate step count for the first block (Causal Forcing++ 1/2-step; "
                                       "default: the checkpoint's).")
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
  if (_PROMPT.value is None) == (_PROMPTS.value is None):
    raise UserError("give exactly one of --prompt or --prompts")
  if _PROMPT.value is not None:
    if not _PROMPT.value.strip():
      raise UserError("--prompt is empty; give the text of the video to generate")
    return [_PROMPT.value]
  path = pathlib.Path(_PROMPTS.value)
  if not path.is_file():
    raise UserError(f"--prompts file {path} does not exist")
  prompts = path.read_text(encoding="utf-8").splitlines()
  if not prompts:
    raise UserError(f"--prompts file {path} is empty; write one prompt per line")
  for i, p in enumerate(prompts):
    if not p.strip():
      raise UserError(f"{path}: prompt {i + 1} is empty; remove blank lines")
  return prompts


def check_layout(frames_per_block: int) -> None:
  """The flags that shape the video against the block size, checked before any weights are read."""
  if _HEIGHT.value % (VAE_SPATIAL * 2) or _WIDTH.value % (VAE_SPATIAL * 2):
    raise UserError(f"--height/--width must be multiples of {VAE_SPATIAL * 2} (VAE ×8, patch ×2)")
  if _IMAGE.value and (not _VAE.value or frames_per_block != 1):
    raise UserError("--image needs --vae_checkpoint and a frame-wise model (frames per block 1)")
  generated = _NUM_FRAMES.value - (1 if _IMAGE.value else 0)  # the image is frame 0
  if generated <= 0 or generated % frames_per_block:
    raise UserError(f"--num_frames {_NUM_FRAMES.value} leaves {generated} frames to generate, not a positive "
                    f"multiple of the {frames_per_block} frames per block")


def text_embeddings(prompts: list[str], cfg: WanConfig) -> np.ndarray:  # [N, L, text_dim]
  if _DRY_RUN.value:
    rng = np.random.default_rng(_SEED.value)
    return rng.standard_normal((len(prompts), cfg.text_len, cfg.text_dim)).astype(np.float32)
  if _T5.value:
    if not _TOKENIZER.value:
      raise UserError("--t5_checkpoint needs --tokenizer (the google/umt5-xxl directory)")
    return text_encoder.TextEncoder.load(_T5.value, _TOKENIZER.value)(prompts)[0]
  if not _EMBEDDINGS.value:
    raise UserError("pass --t5_checkpoint and --tokenizer, --embeddings (from python -m cf_jax.encode_prompts), "
                     "or --dry_run")
  if pathlib.Path(_EMBEDDINGS.value).is_dir():
    rows = list(records.iterate(_EMBEDDINGS.value))
    if [r["prompt"] for r in rows] != prompts:
      raise UserError(f"--embeddings {_EMBEDDINGS.value} was encoded from other prompts than the ones given")
    return np.stack([r["prompt_embeds"] for r in rows]).astype(np.float32)
  embeds = np.load(_EMBEDDINGS.value)
  if embeds.ndim != 3 or embeds.shape[0] != len(prompts) or embeds.shape[2] != cfg.text_dim:
    raise UserError(f"--embeddings {_EMBEDDINGS.value} has shape {embeds.shape}; expected "
                     f"[{len(prompts)} prompts, ≤{cfg.text_len}, {cfg.text_dim}]")
  return embeds.astype(np.float32)


def load_generator(dtype) -> tuple[WanConfig, dict]:
  """The generator's config and params, read in `dtype` and moved onto the device."""
  preset = WanConfig.from_preset(_MODEL.value) if _MODEL.value else None
  cfg, params = weights.load_wan(_CHECKPOINT.value, preset, _ENTRY.value, dtype)
  return cfg, weights.to_device(params)


def sampling(recorded: sampling_setup.SamplingSetup | None) -> tuple[sampling_setup.SamplingSetup, str | None]:
  """The checkpoint's recorded setup with the layout flags over it (chunk-wise 4-step where nothing
  is recorded), and a note saying where it differs from the recorded one or that none was."""
  overrides = {}
  if _FRAMES_PER_BLOCK.value is not None:
    overrides["frames_per_block"] = _FRAMES_PER_BLOCK.value
  if _STEPS.value is not None:
    overrides["denoising_steps"] = streaming.STEP_LISTS[int(_STEPS.value)]
  if _FIRST_BLOCK_STEPS.value is not None:
    overrides["first_block_denoising_steps"] = streaming.STEP_LISTS[int(_FIRST_BLOCK_STEPS.value)]
  setup = dataclasses.replace(recorded or sampling_setup.RELEASED["chunkwise"].setup, **overrides)
  if recorded is None and not {"frames_per_block", "denoising_steps"} <= set(overrides):
    return setup, (f"note: {_CHECKPOINT.value} records no sampling setup; sampling {setup.describe()} (convert "
                   "with --preset to record one)")
  if recorded is not None and setup != recorded:
    return setup, f"note: the flags override the checkpoint's sampling setup: {recorded.describe()} -> {setup.describe()}"
  return setup, None


def load_vae():
  if not _VAE.value:
    return None
  preset = None if weights.is_params_checkpoint(_VAE.value) else weights.NETWORKS["vae"].preset(_VAE_MODEL.value)
  return weights.load("vae", _VAE.value, preset)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  run()


def run():
  prompts = read_prompts()
  recorded = weights.read_info(_CHECKPOINT.value).get("sampling")
  setup, note = sampling(sampling_setup.SamplingSetup.from_info(recorded) if recorded else None)
  check_layout(setup.frames_per_block)
  checkpoint.check_writable(_OUT.value, "--out")
  if note:  # after the checks, so that bad input stays one line
    print(note, file=sys.stderr)
  dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
  cfg, params = load_generator(dtype)
  embeds = text_embeddings(prompts, cfg)
  vae = load_vae()
  generated = _NUM_FRAMES.value - (1 if _IMAGE.value else 0)
  capacity = _NUM_FRAMES.value if _LOCAL_ATTN_FRAMES.value == -1 else _LOCAL_ATTN_FRAMES.value
  config = setup.few_step_config(capacity_frames=capacity, sink_frames=_SINK_FRAMES.value)
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
  print(f"wrote {len(prompts)} videos of {_NUM_FRAMES.value} latent frames ({setup.describe()}) to {out} "
        f"(first batch {timings[0]:.1f} s incl. compilation, later {np.mean(timings[1:] or [np.nan]):.1f} s)")


if __name__ == "__main__":
  cli.run(main)
