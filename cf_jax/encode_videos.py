"""`python -m cf_jax.encode_videos`: videos → normalized VAE latents as ArrayRecord (stage-1 data).

  python -m cf_jax.encode_videos --videos data/clips --out data/latents \
      --vae_checkpoint ckpt/vae --num_frames 81 --height 480 --width 832

`--videos` is a directory of video files (.mp4 .mov .avi .mkv .webm) and/or frame folders (images
sorted by name); each item needs a caption in `<name>.txt` beside it. The first `--num_frames`
frames (1 + 4k) are resized to height × width and encoded; records hold `latents [F, H/8, W/8, 16]`,
`prompt`, `name` and `index`, and with `--t5_checkpoint`/`--tokenizer` also the caption's
`prompt_embeds [512, 4096]`, which stage 1 and consistency distillation train on. Sharded over
hosts and resumable (see `cf_jax.data.records`).
"""
import pathlib

from absl import flags
from absl import logging
import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cf_jax import checkpoint
from cf_jax import cli
from cf_jax import weights
from cf_jax.data import records
from cf_jax.errors import UserError
from cf_jax.models import vae as vae_lib
from cf_jax.text import encoder as text_encoder

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

_VIDEOS = flags.DEFINE_string("videos", None, "Directory of videos and/or frame folders.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output dataset directory.", required=True)
_VAE = flags.DEFINE_string("vae_checkpoint", None, "Converted VAE or Wan2.1_VAE.pth.", required=True)
_VAE_MODEL = flags.DEFINE_enum("vae_model", "wan21", ["wan21", "tiny"], "VAE preset (for a .pth).")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 81, "Frames per video, 1 + 4k (81 → 21 latents).")
_HEIGHT = flags.DEFINE_integer("height", 480, "Pixels.")
_WIDTH = flags.DEFINE_integer("width", 832, "Pixels.")
_ITEMS_PER_SHARD = flags.DEFINE_integer("items_per_shard", 64, "Videos per ArrayRecord shard.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Stored latent and embedding dtype.")
_T5 = flags.DEFINE_string("t5_checkpoint", None, "Converted umT5 or models_t5_umt5-xxl-enc-bf16.pth: also "
                          "store the captions' text embeddings (the training stages need them).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Directory with the google/umt5-xxl spiece.model.")
_T5_MODEL = flags.DEFINE_enum("t5_model", "umt5_xxl", ["umt5_xxl", "tiny"], "umT5 preset (for a .pth).")


def find_items(root: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
  """(video file or frame folder, caption) pairs, sorted by name; every caption must exist."""
  if not root.is_dir():
    raise UserError(f"--videos {root} is not a directory")
  items = []
  for path in sorted(root.iterdir()):
    if path.suffix.lower() in VIDEO_SUFFIXES or (path.is_dir() and _frame_files(path)):
      caption = path.with_suffix(".txt") if path.is_file() else path.parent / f"{path.name}.txt"
      if not caption.is_file() or not caption.read_text(encoding="utf-8").strip():
        raise UserError(f"{path.name} has no caption: write its prompt into {caption.name}")
      items.append((path, caption.read_text(encoding="utf-8").strip()))
  if not items:
    raise UserError(f"--videos {root} holds no video files or frame folders")
  return items


def _frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_frames(path: pathlib.Path, num_frames: int, height: int, width: int) -> np.ndarray:
  """The first `num_frames` frames, resized, as [T, H, W, 3] in [-1, 1]."""
  try:
    if path.is_dir():
      images = [Image.open(p).convert("RGB") for p in _frame_files(path)[:num_frames]]
    else:
      with imageio.get_reader(path) as reader:
        images = []
        for frame in reader:
          images.append(Image.fromarray(frame).convert("RGB"))
          if len(images) == num_frames:
            break
  except (OSError, ValueError, RuntimeError) as e:
    raise UserError(f"cannot read {path}: {e}") from None
  if len(images) < num_frames:
    raise UserError(f"{path} has {len(images)} frames, fewer than --num_frames {num_frames}")
  frames = [np.asarray(im.resize((width, height), Image.Resampling.BICUBIC), np.float32) for im in images]
  return np.stack(frames) / 127.5 - 1.0


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run()


def run():
  if (_NUM_FRAMES.value - 1) % 4:
    raise UserError(f"--num_frames {_NUM_FRAMES.value} must be 1 + 4k (e.g. 81)")
  if _HEIGHT.value % 16 or _WIDTH.value % 16:
    raise UserError("--height and --width must be multiples of 16 (VAE ×8, DiT patch ×2)")
  items = find_items(pathlib.Path(_VIDEOS.value))
  checkpoint.check_writable(_OUT.value, "--out")
  preset = None if weights.is_params_checkpoint(_VAE.value) else weights.NETWORKS["vae"].preset(_VAE_MODEL.value)
  vae_config, params = weights.load("vae", _VAE.value, preset)
  dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
  if bool(_T5.value) != bool(_TOKENIZER.value):
    raise UserError("--t5_checkpoint and --tokenizer go together (both, or neither)")
  text = text_encoder.TextEncoder.load(_T5.value, _TOKENIZER.value, _T5_MODEL.value) if _T5.value else None

  def encode_batch(batch, first_index):
    out = []
    for offset, (path, prompt) in enumerate(batch):
      video = read_frames(path, _NUM_FRAMES.value, _HEIGHT.value, _WIDTH.value)
      latents = vae_lib.encode(params, jnp.asarray(video)[None], vae_config)[0]  # [F, h, w, 16]
      record = {"index": first_index + offset, "name": path.name, "prompt": prompt,
                "latents": np.asarray(latents.astype(dtype))}
      if text is not None:
        record["prompt_embeds"] = np.asarray(jnp.asarray(text([prompt])[0][0]).astype(dtype))  # [512, 4096]
      out.append(record)
    return out

  records.write_sharded(
      _OUT.value, items, encode_batch, _ITEMS_PER_SHARD.value, batch_size=1, description="videos",
      metadata={"kind": "video_latents", "num_frames": _NUM_FRAMES.value, "height": _HEIGHT.value,
                "width": _WIDTH.value, "dtype": _DTYPE.value, "prompt_embeds": text is not None},
  )
  if jax.process_index() == 0:
    print(f"wrote {len(items)} latent videos to {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
