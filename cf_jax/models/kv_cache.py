"""Static-shape KV cache for block-by-block causal generation (spec: architecture.md §3.5).

Self-attention keys (post-RoPE, so absolute positions are baked in) and values of every layer are
kept in fixed arrays `[L, B, H, C·S, Dh]` holding C latent frames of S tokens, heads-major so the
two minor dimensions (C·S, Dh) fill TPU tiles: with the heads minor, 12 heads would pad to 16.
Frame f is stored
in slot

    f                                  for the first `sink_frames` frames (never evicted),
    sink + (f − sink) mod (C − sink)   otherwise (a ring over the rest),

so a cache of capacity C ≥ all frames is the reference's full cache, and a smaller one is its
rolling window with attention sinks: writing a new block overwrites exactly the frames the
reference evicts. Slots fill in order, so the valid keys are always the first
min(end_frame, C)·S rows — a length, not a mask. Re-running a block (each denoising step, then the
cache refresh) rewrites the same rows, as the reference does; a forward scatters only those rows
(`write`), so under jit with the cache carried or donated the update happens in place.

The cross-attention keys/values of the prompt are computed once per prompt and kept beside them,
heads-major too, so no call transposes them.
"""
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [L, B, H, C·S, Dh]
  v: jax.Array  # [L, B, H, C·S, Dh]
  cross_k: jax.Array  # [L, B, H, Lt, Dh]
  cross_v: jax.Array  # [L, B, H, Lt, Dh]
  tokens_per_frame: int = flax.struct.field(pytree_node=False)
  sink_frames: int = flax.struct.field(pytree_node=False, default=0)

  @classmethod
  def create(
      cls,
      cross_kv: tuple[jax.Array, jax.Array],  # 2 × [L, B, H, Lt, Dh], from `WanTextCache`
      capacity_frames: int,
      tokens_per_frame: int,
      sink_frames: int = 0,
      dtype=None,
  ) -> "KVCache":
    cross_k, cross_v = cross_kv
    if not 0 <= sink_frames < capacity_frames:
      raise ValueError(f"sink_frames={sink_frames} must be in [0, capacity_frames={capacity_frames})")
    layers, batch, heads, _, head_dim = cross_k.shape
    shape = (layers, batch, heads, capacity_frames * tokens_per_frame, head_dim)
    dtype = dtype or cross_k.dtype
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), cross_k, cross_v, tokens_per_frame, sink_frames)

  @property
  def capacity_frames(self) -> int:
    return self.k.shape[3] // self.tokens_per_frame

  def slot_rows(self, start_frame: jax.Array, num_frames: int) -> jax.Array:  # [n·S] int32
    """Cache rows of the tokens of frames [start_frame, start_frame + num_frames)."""
    frames = start_frame + jnp.arange(num_frames)  # [n]
    sink, ring = self.sink_frames, self.capacity_frames - self.sink_frames
    slots = jnp.where(frames < sink, frames, sink + (frames - sink) % ring)
    return (slots[:, None] * self.tokens_per_frame + jnp.arange(self.tokens_per_frame)).reshape(-1)

  def valid_length(self, start_frame: jax.Array, num_frames: int) -> jax.Array:  # [] int32
    """Rows holding keys once frames up to start_frame + num_frames are written."""
    return jnp.minimum(start_frame + num_frames, self.capacity_frames) * self.tokens_per_frame

  def write(self, rows: jax.Array, k: jax.Array, v: jax.Array) -> "KVCache":
    """Stores every layer's keys/values k, v [L, B, H, n·S, Dh] of a block at its `slot_rows`."""
    return self.replace(k=self.k.at[:, :, :, rows].set(k), v=self.v.at[:, :, :, rows].set(v))
