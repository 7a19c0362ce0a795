"""Position and timestep encodings of the Wan DiT: 3D RoPE and the sinusoidal time embedding.

Both are computed by the reference in float64. Tables of cos/sin are built here in float64 numpy
(static constants) and only gathered on device, so float32 results match the reference to a few
ulp even at positions and timesteps near 1000, where a float32 product p·ω alone would already be
off by ~6e-5 rad.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

ROPE_THETA = 10000.0
ROPE_MAX_POSITION = 1024  # table length per axis in the reference
_TIME_TABLE_STRIDE = 32  # t = 32·a + b + frac with a, b < 32 (covers t < 1024)


def rope_pair_split(head_dim: int) -> tuple[int, int, int]:
  """Complex pairs given to (time, height, width): [c − 2⌊c/3⌋, ⌊c/3⌋, ⌊c/3⌋], c = head_dim/2."""
  c = head_dim // 2
  return (c - 2 * (c // 3), c // 3, c // 3)


@functools.lru_cache(maxsize=8)
def _rope_tables(head_dim: int) -> tuple[np.ndarray, ...]:
  """Per-axis cos and sin tables [1024, n_axis] (float64 maths, float32 storage)."""
  tables = []
  for n in rope_pair_split(head_dim):
    omega = ROPE_THETA ** (-np.arange(n, dtype=np.float64) * 2 / (2 * n))  # [n]
    angles = np.arange(ROPE_MAX_POSITION, dtype=np.float64)[:, None] * omega  # [1024, n]
    tables += [np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)]
  return tuple(tables)


def rope_cos_sin(
    frame_positions: jax.Array,  # [F] int: temporal position of each frame
    height: int,  # h: tokens per column of a frame
    width: int,  # w: tokens per row
    head_dim: int,
) -> tuple[jax.Array, jax.Array]:  # 2 × [F·h·w, head_dim/2]
  """cos/sin of every token's rotation angles, tokens in (frame, y, x) row-major order."""
  cos_t, sin_t, cos_h, sin_h, cos_w, sin_w = (jnp.asarray(t) for t in _rope_tables(head_dim))
  num_frames = frame_positions.shape[0]

  def grid(tf, th, tw):
    parts = (
        jnp.broadcast_to(tf[frame_positions][:, None, None], (num_frames, height, width, tf.shape[1])),
        jnp.broadcast_to(th[:height][None, :, None], (num_frames, height, width, th.shape[1])),
        jnp.broadcast_to(tw[:width][None, None, :], (num_frames, height, width, tw.shape[1])),
    )
    return jnp.concatenate(parts, axis=-1).reshape(num_frames * height * width, -1)

  return grid(cos_t, cos_h, cos_w), grid(sin_t, sin_h, sin_w)


def apply_rope(
    x: jax.Array,  # [B, L, H, Dh]
    cos: jax.Array,  # [L, Dh/2]
    sin: jax.Array,  # [L, Dh/2]
) -> jax.Array:  # [B, L, H, Dh]
  """Rotates interleaved pairs (x[2i], x[2i+1]) as complex numbers (GPT-J style)."""
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)  # [B, L, H, Dh/2, 2]
  re, im = pairs[..., 0], pairs[..., 1]
  cos, sin = cos[None, :, None, :], sin[None, :, None, :]
  out = jnp.stack([re * cos - im * sin, re * sin + im * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


@functools.lru_cache(maxsize=8)
def _time_tables(freq_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ω [half] and cos/sin tables of 32·a·ω and b·ω for a, b < 32, in float64."""
  half = freq_dim // 2
  omega = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)  # [half]
  steps = np.arange(_TIME_TABLE_STRIDE, dtype=np.float64)[:, None]
  coarse = steps * _TIME_TABLE_STRIDE * omega  # [32, half]
  fine = steps * omega  # [32, half]
  return (
      omega.astype(np.float32),
      np.stack([np.cos(coarse), np.sin(coarse)]).astype(np.float32),  # [2, 32, half]
      np.stack([np.cos(fine), np.sin(fine)]).astype(np.float32),  # [2, 32, half]
  )


def timestep_embedding(t: jax.Array, freq_dim: int) -> jax.Array:
  """Sinusoid of the raw timestep (0..1000 scale): [cos(t·ω), sin(t·ω)], cosines first.

  t [...] → [..., freq_dim] float32; requires 0 ≤ t < 1024 (true for every schedule in use).
  """
  omega, coarse, fine = (jnp.asarray(a) for a in _time_tables(freq_dim))
  t = t.astype(jnp.float32)[..., None]  # [..., 1]
  whole = jnp.clip(jnp.floor(t), 0, _TIME_TABLE_STRIDE**2 - 1)
  frac = t - whole  # exact in float32
  a = (whole // _TIME_TABLE_STRIDE).astype(jnp.int32)[..., 0]
  b = (whole % _TIME_TABLE_STRIDE).astype(jnp.int32)[..., 0]
  cos_a, sin_a = coarse[0][a], coarse[1][a]
  cos_b, sin_b = fine[0][b], fine[1][b]
  cos_f, sin_f = jnp.cos(frac * omega), jnp.sin(frac * omega)
  # cos/sin of (32a + b)·ω + frac·ω by the angle-addition formulas.
  cos_ab = cos_a * cos_b - sin_a * sin_b
  sin_ab = sin_a * cos_b + cos_a * sin_b
  cos = cos_ab * cos_f - sin_ab * sin_f
  sin = sin_ab * cos_f + cos_ab * sin_f
  return jnp.concatenate([cos, sin], axis=-1)
