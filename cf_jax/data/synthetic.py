"""Toy videos with real temporal structure: bouncing shapes over a static background.

Gaussian-noise latents (the pipeline's `synthetic` source) exercise the code but give a model
nothing to learn, so a distillation recipe run on them cannot be judged. These videos are small
enough for a whole recipe on two CPU cores, yet have what video models must get right: objects
that persist, move at constant velocity, bounce elastically off the borders and occlude each other
in a fixed depth order. Every video is drawn from `np.random.default_rng([seed, index])`, so a video
depends only on the seed and its index (not on how many are made), and the ground-truth state
(positions, velocities, soft masks) comes with it for tests.

Values are in "latent" units: raw colours are zero-mean and symmetric in every channel, so the raw
mean is 0, and they are divided by the fixed `RAW_STD`, measured once over 4096 videos of the
default shape (6 x 16 x 16 x 4) per seed, never per batch, so generated and real videos share one
scale (other shapes come out near, not at, unit variance).

A label per video (number of objects and the shape of the deepest one) maps to a fixed random
text embedding, a stand-in for prompts so conditional generation and CFG have something to do.
"""
import numpy as np

MAX_OBJECTS = 3
SHAPES = ("disc", "square")
NUM_LABELS = MAX_OBJECTS * len(SHAPES)
MIN_SIZE, MAX_SIZE = 2.0, 5.0  # diameter of a disc, side of a square, in pixels
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # pixels per frame
EDGE = 0.5  # sigmoid scale of the masks' edges: 0.12 -> 0.88 over one pixel
OBJECT_COLOUR_STD = 1.0
BACKGROUND_STD = 0.5  # flat colour, and the gradient's colour across the whole frame
GRADIENT_PROB = 0.5
RAW_MEAN = 0.0  # every colour is drawn zero-mean and symmetric
RAW_STD = 0.527  # std of the raw values, 4096 default-shape videos per seed 0, 1, 2: 0.5267 to 0.5276
EMBED_OFFSET = 10**6  # label l's embedding: default_rng([seed, EMBED_OFFSET + l]), as in the pipeline


def _draw_video(rng: np.random.Generator, height: int, width: int, channels: int) -> dict[str, np.ndarray]:
  """One video's static parameters; absent objects (beyond `num_objects`) are drawn but inactive."""
  num_objects = rng.integers(1, MAX_OBJECTS + 1)
  size = rng.uniform(MIN_SIZE, MAX_SIZE, MAX_OBJECTS)  # [K]
  half = size / 2
  low, high = half[:, None], np.array([height, width]) - half[:, None]  # [K, 2] centre bounds
  angle = rng.uniform(0, 2 * np.pi, MAX_OBJECTS)
  speed = rng.uniform(MIN_SPEED, MAX_SPEED, MAX_OBJECTS)
  flat = rng.normal(0, BACKGROUND_STD, channels)  # [C]
  ramp_angle = rng.uniform(0, 2 * np.pi)
  ramp_colour = rng.normal(0, BACKGROUND_STD, channels) * (rng.uniform() < GRADIENT_PROB)  # [C]
  return {
      "active": np.arange(MAX_OBJECTS) < num_objects,  # [K]
      "shape": rng.integers(0, len(SHAPES), MAX_OBJECTS),  # [K]
      "size": size,
      "start": rng.uniform(low, high),  # [K, 2] (y, x), pixel centres at i + 0.5
      "start_velocity": speed[:, None] * np.stack([np.sin(angle), np.cos(angle)], -1),  # [K, 2]
      "low": low,
      "high": high,
      "colour": rng.normal(0, OBJECT_COLOUR_STD, (MAX_OBJECTS, channels)),  # [K, C]
      "background": _background(flat, ramp_colour, ramp_angle, height, width),  # [H, W, C]
  }


def _background(flat, ramp_colour, ramp_angle, height: int, width: int) -> np.ndarray:
  """A flat colour plus a linear ramp from -1/2 to 1/2 of `ramp_colour` along `ramp_angle`."""
  y = (np.arange(height) + 0.5) / height - 0.5
  x = (np.arange(width) + 0.5) / width - 0.5
  ramp = np.sin(ramp_angle) * y[:, None] + np.cos(ramp_angle) * x[None, :]  # [H, W]
  ramp = ramp / (2 * np.abs(ramp).max())
  return flat + ramp[..., None] * ramp_colour


def bounce(start, velocity, low, high, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Positions and velocities [..., F, 2] of points moving at constant `velocity` from `start`
  (both [..., 2]) and reflecting elastically off `low` and `high`: a triangle wave of the free path."""
  t = np.arange(num_frames)[:, None]  # [F, 1]
  span = (high - low)[..., None, :]
  phase = np.mod(start[..., None, :] - low[..., None, :] + velocity[..., None, :] * t, 2 * span)
  forward = phase <= span
  position = low[..., None, :] + np.where(forward, phase, 2 * span - phase)
  return position, np.where(forward, 1.0, -1.0) * velocity[..., None, :]


def soft_masks(position, size, shape, height: int, width: int) -> np.ndarray:
  """Anti-aliased masks [..., H, W] of discs or squares (`shape` 0 or 1) of `size` centred at
  `position` [..., 2]: a sigmoid of the signed distance to the outline."""
  dy = (np.arange(height)[:, None] + 0.5) - position[..., 0, None, None]  # [..., H, 1]
  dx = (np.arange(width)[None, :] + 0.5) - position[..., 1, None, None]  # [..., 1, W]
  disc = np.sqrt(dy**2 + dx**2)
  square = np.maximum(np.abs(dy), np.abs(dx))
  distance = np.where(shape[..., None, None] == 0, disc, square) - size[..., None, None] / 2
  return 1 / (1 + np.exp(distance / EDGE))


def composite(background, masks, colour) -> np.ndarray:
  """Paint objects over the background in depth order (later objects on top).

  background [N, H, W, C], masks [N, F, K, H, W], colour [N, K, C] -> [N, F, H, W, C]."""
  frames = np.broadcast_to(background[:, None], (*masks.shape[:2], *background.shape[1:]))
  for k in range(masks.shape[2]):
    m = masks[:, :, k, ..., None]  # [N, F, H, W, 1]
    frames = frames * (1 - m) + m * colour[:, None, None, None, k]
  return frames


def make_videos_with_state(seed: int, num_videos: int, num_frames: int = 6, height: int = 16,
                           width: int = 16, channels: int = 4) -> dict[str, np.ndarray]:
  """Videos and their ground truth. Keys (K = MAX_OBJECTS, inactive objects have zero masks):

    videos      [N, F, H, W, C] float32, normalized by RAW_MEAN / RAW_STD
    num_objects [N]             1..MAX_OBJECTS, the first ones in depth order are active
    active      [N, K]          bool
    shape       [N, K]          index into SHAPES
    size        [N, K]          diameter or side, pixels
    colour      [N, K, C]       raw (unnormalized) colours
    position    [N, F, K, 2]    centre (y, x) in pixels, pixel centres at i + 0.5
    velocity    [N, F, K, 2]    pixels per frame, from frame f on (signs flip at bounces)
    masks       [N, F, K, H, W] soft masks before occlusion
  """
  drawn = [_draw_video(np.random.default_rng([seed, i]), height, width, channels) for i in range(num_videos)]
  p = {k: np.stack([d[k] for d in drawn]) for k in drawn[0]}
  position, velocity = bounce(p["start"], p["start_velocity"], p["low"], p["high"], num_frames)
  position, velocity = position.swapaxes(1, 2), velocity.swapaxes(1, 2)  # [N, K, F, 2] -> [N, F, K, 2]
  masks = soft_masks(position, p["size"][:, None], p["shape"][:, None], height, width)
  masks = masks * p["active"][:, None, :, None, None]  # [N, F, K, H, W]
  videos = (composite(p["background"], masks, p["colour"]) - RAW_MEAN) / RAW_STD
  return {"videos": videos.astype(np.float32), "num_objects": p["active"].sum(1), "active": p["active"],
          "shape": p["shape"], "size": p["size"], "colour": p["colour"], "position": position,
          "velocity": velocity, "masks": masks.astype(np.float32)}


def make_videos(seed: int, num_videos: int, num_frames: int = 6, height: int = 16, width: int = 16,
                channels: int = 4) -> np.ndarray:
  """`num_videos` normalized videos [N, F, H, W, C] float32, deterministic in `seed`."""
  return make_videos_with_state(seed, num_videos, num_frames, height, width, channels)["videos"]


def labels(state: dict[str, np.ndarray]) -> np.ndarray:
  """A label per video [N] in [0, NUM_LABELS): its number of objects and its deepest object's shape."""
  return ((state["num_objects"] - 1) * len(SHAPES) + state["shape"][:, 0]).astype(np.int32)


def label_embedding(label: int, text_len: int, text_dim: int, seed: int) -> np.ndarray:
  """The fixed random embedding [text_len, text_dim] float32 of one label."""
  return np.random.default_rng([seed, EMBED_OFFSET + label]).standard_normal((text_len, text_dim), np.float32)


def prompt_embeddings(state_or_labels: dict[str, np.ndarray] | np.ndarray, text_len: int, text_dim: int,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Stand-in prompt embeddings [N, text_len, text_dim] float32 (the same label, the same embedding)
  and the labels [N], from a state of `make_videos_with_state` or from labels directly."""
  if isinstance(state_or_labels, dict):
    state_or_labels = labels(state_or_labels)
  ids = np.asarray(state_or_labels, np.int32)  # [N]
  table = np.stack([label_embedding(label, text_len, text_dim, seed) for label in range(NUM_LABELS)])
  return table[ids], ids  # [NUM_LABELS, Lt, D] -> [N, Lt, D]
