"""Few-step streaming generation with a KV cache (spec: algorithms.md §8.2, architecture.md §3.5-3.6).

The video is produced block by block (1 frame frame-wise, 3 chunk-wise). For each block:

    x ← noise of the block
    for each timestep t_i of the step list:
        x̂0 = x − σ(t_i)·G(x, t_i)               (the block attends to the cached earlier blocks)
        if not last: x ← (1 − σ(t_{i+1}))·x̂0 + σ(t_{i+1})·ε_i      with fresh noise ε_i
    cache refresh: G(x̂0, context_noise)          (rewrites the block's cache rows with clean K/V)

One jitted function does a whole block for a given step list (`blockwise.generate_block`, the
block function the DMD rollout and the AR teacher sampler share); the block's start frame is a
traced argument, so every block of a video (and every video) reuses the same compilation. The
cache is donated to it and its rows are rewritten in place.
"""
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cf_jax.diffusion import blockwise
from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import noise as noise_lib
from cf_jax.models import vae as vae_lib
from cf_jax.models import wan
from cf_jax.models.kv_cache import KVCache

# Unwarped step lists of the released configs (spec §1.5, §9.2).
STEP_LISTS = {4: (1000, 750, 500, 250), 2: (1000, 500), 1: (1000,)}


@dataclasses.dataclass(frozen=True)
class FewStepConfig:
  """Static settings of the streaming sampler.

  Attributes:
    frames_per_block: 1 (frame-wise) or 3 (chunk-wise).
    steps: warped denoising timesteps, e.g. (1000, 937.5, 833.33, 625).
    first_block_steps: optional separate list for the first generated block (Causal Forcing++
      1- and 2-step models use the 4-step list there).
    context_noise: timestep of the cache-refresh pass (0 in every released config).
    capacity_frames: KV-cache capacity in latent frames; fewer than the video length makes a
      rolling window (local attention) of that many frames.
    sink_frames: frames at the start that a rolling window never evicts.
  """

  frames_per_block: int
  steps: tuple[float, ...]
  first_block_steps: tuple[float, ...] | None = None
  context_noise: float = 0.0
  capacity_frames: int = 21
  sink_frames: int = 0

  @classmethod
  def from_step_lists(cls, frames_per_block: int, steps, first_block_steps=None, shift: float = 5.0, **kw):
    """From unwarped step lists (e.g. (1000, 750, 500, 250)), warped with `shift`
    (warp_denoising_step: true)."""
    warp = lambda d: tuple(float(t) for t in fm.warp_denoising_steps(d, shift))
    return cls(frames_per_block, warp(steps), warp(first_block_steps) if first_block_steps else None, **kw)

  @classmethod
  def from_step_count(cls, frames_per_block: int, num_steps: int, first_block_num_steps: int | None = None, **kw):
    """Uses the released step lists (shift 5)."""
    first = STEP_LISTS[first_block_num_steps] if first_block_num_steps else None
    return cls.from_step_lists(frames_per_block, STEP_LISTS[num_steps], first, **kw)


@flax.struct.dataclass
class StreamState:
  cache: KVCache
  next_frame: jax.Array  # [] int32 absolute index of the next block's first frame


class StreamingSampler:
  """Block-by-block few-step sampler over a causal Wan DiT.

  Example:
    sampler = StreamingSampler(wan.WanModel(cfg), params, FewStepConfig.from_step_count(3, 4))
    state = sampler.start(prompt_embeds, latent_hw=(60, 104))
    for block in sampler.stream(state, noise, key):   # yields [B, K, H, W, C] latents
      ...
  """

  def __init__(self, model: wan.WanModel, params: Any, config: FewStepConfig, grid: fm.FlowGrid | None = None):
    self.model = model
    self.params = params
    self.config = config
    self.grid = fm.training_grid(shift=5.0) if grid is None else grid
    self._block_fns: dict[tuple[float, ...], Any] = {}
    self._text_cache = jax.jit(
        lambda p, c: wan.WanTextCache(model.config, model.dtype, model.param_dtype).apply({"params": p}, c)
    )

  # -- state --------------------------------------------------------------------------------

  def start(self, context: jax.Array, latent_hw: tuple[int, int]) -> StreamState:
    """A fresh cache for a batch of prompts `context` [B, Lt, text_dim]."""
    cache = KVCache.create(
        self._text_cache(self.params, context),
        self.config.capacity_frames,
        self.model.config.tokens_per_frame(*latent_hw),
        self.config.sink_frames,
        dtype=self.model.dtype,
    )
    return StreamState(cache, jnp.int32(0))

  def set_prompt(self, state: StreamState, context: jax.Array) -> StreamState:
    """Switches the prompt for the following blocks; the frames already cached stay."""
    cross_k, cross_v = self._text_cache(self.params, context)
    return state.replace(cache=state.cache.replace(cross_k=cross_k, cross_v=cross_v))

  def condition_on_frames(self, state: StreamState, latents: jax.Array) -> StreamState:
    """Caches given clean latents [B, P, H, W, C] at t = 0 (image-to-video: the image latent)."""
    _, cache = self._refresh(self.params, state.cache, latents, state.next_frame)
    return StreamState(cache, state.next_frame + latents.shape[1])

  # -- generation ---------------------------------------------------------------------------

  def steps_for_block(self, block_index: int) -> tuple[float, ...]:
    first = self.config.first_block_steps
    return first if block_index == 0 and first is not None else self.config.steps

  def generate_block(
      self, state: StreamState, block_index: int, noise: jax.Array, step_noise: jax.Array
  ) -> tuple[jax.Array, StreamState, blockwise.BlockTrace]:
    """Denoises one block. noise [B, K, H, W, C]; step_noise [n_steps − 1, B, K, H, W, C]."""
    x0, cache, trace = self._block_fn(self.steps_for_block(block_index))(
        self.params, state.cache, noise, step_noise, state.next_frame
    )
    return x0, StreamState(cache, state.next_frame + noise.shape[1]), trace

  def stream(
      self,
      state: StreamState,
      noise: jax.Array,  # [B, F, H, W, C] initial noise of the frames to generate
      key: jax.Array | None = None,
      step_noise: list[jax.Array] | None = None,  # per block: [n_steps − 1, B, K, H, W, C]
  ) -> Iterator[tuple[jax.Array, StreamState]]:
    """Yields (block latents [B, K, H, W, C], state) as soon as each block is ready.

    The noise between denoising steps is drawn from `key` (block b uses fold_in(key, b)), or
    replayed from `step_noise`.
    """
    k = self.config.frames_per_block
    if noise.shape[1] % k:
      raise ValueError(f"{noise.shape[1]} frames do not split into blocks of {k}")
    for b in range(noise.shape[1] // k):
      block_noise = noise[:, b * k : (b + 1) * k]
      n_fresh = len(self.steps_for_block(b)) - 1
      if step_noise is not None:
        fresh = step_noise[b]
      else:
        fresh = noise_lib.normal(jax.random.fold_in(key, b), (n_fresh, *block_noise.shape), block_noise.dtype)
      x0, state, _ = self.generate_block(state, b, block_noise, fresh)
      yield x0, state

  def generate(self, context, noise, key=None, image_latent=None, step_noise=None) -> jax.Array:
    """Whole video [B, F, H, W, C]. With `image_latent` [B, 1, H, W, C] (image-to-video) the
    output's first frame is that latent and `noise` covers the F − 1 frames after it."""
    state = self.start(context, noise.shape[2:4])
    blocks = []
    if image_latent is not None:
      state = self.condition_on_frames(state, image_latent)
      blocks.append(image_latent)
    blocks += [x0 for x0, state in self.stream(state, noise, key, step_noise)]
    return jnp.concatenate(blocks, axis=1)

  # -- compiled pieces ----------------------------------------------------------------------

  def _call(self, params, cache, x, t, start_frame):
    return blockwise.cached_forward(self.model, params, start_frame)(cache, x, t)

  @functools.cached_property
  def _refresh(self):
    """The cache-refresh pass: clean latents at t = context_noise, fed as they are (inference)."""
    refresh = lambda p, cache, x0, start: self._call(p, cache, x0, self.config.context_noise, start)
    return jax.jit(refresh, donate_argnums=(1,))

  def _block_fn(self, steps: tuple[float, ...]):
    """The jitted whole-block function of one step list (built once per list)."""
    if steps not in self._block_fns:
      self._block_fns[steps] = self._build_block_fn(steps)
    return self._block_fns[steps]

  def _build_block_fn(self, steps: tuple[float, ...]):
    def block(params, cache, noise, step_noise, start_frame):  # step_noise [n_steps − 1, B, K, H, W, C]
      denoise = blockwise.few_step(jnp.asarray(steps, jnp.float32), len(steps) - 1, lambda i: step_noise[i], self.grid)
      forward = blockwise.cached_forward(self.model, params, start_frame)
      x0, _, cache, trace = blockwise.generate_block(forward, cache, noise, denoise, self.config.context_noise)
      return x0, cache, trace

    return jax.jit(block, donate_argnums=(1,))


def with_frames(
    blocks: Iterator[tuple[jax.Array, StreamState]], vae_params: Any, vae_config: vae_lib.VAEConfig
) -> Iterator[tuple[jax.Array, jax.Array, StreamState]]:
  """Adds pixels to a block stream: yields (latents [B, K, h, w, 16], frames [B, T, 8h, 8w, 3] in
  [-1, 1], state), decoding each block with the VAE's causal caches as soon as it exists (the
  first block gives 1 + 4(K − 1) frames, later ones 4K)."""
  decode_state = None
  for latents, state in blocks:
    if decode_state is None:
      b, _, h, w, _ = latents.shape
      decode_state = vae_lib.init_decode_state(vae_config, b, h, w, latents.dtype)
    decode_state, frames = vae_lib.decode_step(vae_params, decode_state, latents)
    yield latents, frames, state
