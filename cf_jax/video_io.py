"""Writing generated videos (MP4 at the reference's 16 fps, and GIF) and reading conditioning images."""
import io
import os
import pathlib

import imageio.v2 as imageio
import numpy as np
from PIL import Image

from cf_jax.errors import UserError

FPS = 16  # Wan2.1 sample_fps


def to_uint8(frames: np.ndarray) -> np.ndarray:  # [T, H, W, 3] in [-1, 1] -> uint8
  """The reference's mapping: (x·0.5 + 0.5) clamped to [0, 1], times 255."""
  return (np.clip(np.asarray(frames, np.float32) * 0.5 + 0.5, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = FPS) -> None:
  """frames [T, H, W, 3] in [-1, 1]; written to a temporary name, then renamed."""
  tmp = pathlib.Path(f"{path}.tmp.mp4")
  with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
    for frame in to_uint8(frames):
      writer.append_data(frame)
  os.replace(tmp, path)


def gif_bytes(frames: np.ndarray, fps: int = FPS) -> bytes:
  """An animated GIF of frames [T, H, W, 3] in [-1, 1], looping."""
  images = [Image.fromarray(f) for f in to_uint8(frames)]
  buffer = io.BytesIO()
  images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0)
  return buffer.getvalue()


def write_gif(frames: np.ndarray, path: str | os.PathLike, fps: int = FPS) -> None:
  """frames [T, H, W, 3] in [-1, 1]."""
  tmp = pathlib.Path(f"{path}.tmp.gif")
  tmp.write_bytes(gif_bytes(frames, fps))
  os.replace(tmp, path)


def read_image(path: str | os.PathLike, height: int, width: int) -> np.ndarray:  # -> [1, H, W, 3] in [-1, 1]
  """An RGB image resized to the video size, as the reference's image-to-video input."""
  try:
    image = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read image {path}: {e}") from None
  return (np.asarray(image, np.float32) / 127.5 - 1.0)[None]
