"""Multi-step samplers with classifier-free guidance for the non-distilled models.

* `sample_autoregressive` — the stage-1 AR diffusion model, block by block with KV caches
  (spec: algorithms.md §8.3): UniPC 50 steps (or Euler on any grid), guidance weight 3 on flow,
  then a t = 0 pass to cache the block.
* `sample_ode_trajectory` — ODE-pair generation (§4.2): all frames denoised together on the
  48-step grid, each block conditioned on the ground-truth history by teacher forcing (the AR
  teacher), or with no history (a bidirectional teacher, for comparison); guidance weight 6.
* `sample_bidirectional` — the bidirectional teacher over the whole video.

Conditional and unconditional passes run as one batch of 2B, so guidance costs one call.
"""
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cf_jax.diffusion import blockwise
from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import solvers
from cf_jax.models import wan
from cf_jax.models.kv_cache import KVCache

ODE_RECORD_STEPS = (0, 12, 24, 36)  # 48-grid indices of the warped 4-step list (spec §4.2)


def _guided(flow_2b: jax.Array, weight: float) -> jax.Array:
  cond, uncond = jnp.split(flow_2b, 2)
  return solvers.guidance(cond, uncond, weight)


def _twice(x):
  return None if x is None else jnp.concatenate([x, x])


def sample_bidirectional(
    model: wan.WanModel,
    params,
    noise: jax.Array,  # [B, F, H, W, C]
    cond: jax.Array,  # [B, Lt, text_dim]
    uncond: jax.Array,  # [B, Lt, text_dim]
    guidance_weight: float = 3.0,
    solver: str = "euler",
    num_steps: int = 48,
) -> jax.Array:
  """Full-sequence sampling of a bidirectional model; returns x0 [B, F, H, W, C]."""
  context = jnp.concatenate([cond, uncond])
  call = jax.jit(lambda p, x, t: model.apply({"params": p}, x, jnp.full(x.shape[:1], t), context))
  flow_fn = lambda x, t: _guided(call(params, _twice(x), t), guidance_weight)
  timesteps, sigmas = _schedule(solver, num_steps)
  return _solve(solver, flow_fn, noise, timesteps, sigmas)


def sample_ode_trajectory(
    model: wan.WanModel,
    params,
    noise: jax.Array,  # [B, F, H, W, C]
    clean: jax.Array | None,  # [B, F, H, W, C] ground-truth history (None: bidirectional teacher)
    cond: jax.Array,
    uncond: jax.Array,
    layout: wan.Layout,
    guidance_weight: float = 6.0,
    record: Sequence[int] = ODE_RECORD_STEPS,
) -> jax.Array:  # [B, len(record) + 2, F, H, W, C]
  """Euler on the 48-step shift-5 grid; returns the states before the `record` steps, the ODE
  endpoint and the clean latents (the reference's stored ODE pair, §4.2)."""
  grid = fm.ode_grid()
  context = jnp.concatenate([cond, uncond])
  call = _full_sequence_call(model, layout)
  flow_fn = lambda x, t: _guided(call(params, _twice(x), t, context, _twice(clean)), guidance_weight)
  sigmas = np.append(np.asarray(grid.sigmas, np.float64), 0.0)
  end, states = solvers.euler(flow_fn, noise, np.asarray(grid.timesteps), sigmas, record)
  final = clean if clean is not None else end
  return jnp.stack([*states, end, final], axis=1)


@functools.cache
def _full_sequence_call(model: wan.WanModel, layout: wan.Layout):
  """One jitted full-sequence forward per (model, layout), shared by every batch and step."""
  def call(p, x, t, context, clean):
    return model.apply({"params": p}, x, jnp.full(x.shape[:2], t), context, layout, clean_x=clean)

  return jax.jit(call)


def sample_autoregressive(
    model: wan.WanModel,
    params,
    noise: jax.Array,  # [B, F, H, W, C]
    cond: jax.Array,
    uncond: jax.Array,
    frames_per_block: int,
    guidance_weight: float = 3.0,
    solver: str = "unipc",
    num_steps: int = 50,
    context_noise: float = 0.0,
) -> jax.Array:
  """Block-by-block sampling of the causal model with CFG; every block gets a fresh solver, and
  after it the block is cached at t = context_noise for both prompts."""
  b, f, height, width, _ = noise.shape
  text_cache = wan.WanTextCache(model.config, model.dtype, model.param_dtype)
  cache = KVCache.create(
      text_cache.apply({"params": params}, jnp.concatenate([cond, uncond])),
      capacity_frames=f,
      tokens_per_frame=model.config.tokens_per_frame(height, width),
      dtype=model.dtype,
  )

  # One compiled forward for every call; the solver's steps run from Python (not unrolled into
  # one program), so the block function runs eagerly around it.
  call = jax.jit(lambda p, cache, x, t, start: blockwise.cached_forward(model, p, start)(cache, x, t))
  timesteps, sigmas = _schedule(solver, num_steps)

  def denoise(forward, cache, x):
    flow_fn = lambda x, t: _guided(forward(cache, x, t)[0], guidance_weight)  # the cache as it is (`blockwise.Denoise`)
    return _solve(solver, flow_fn, x, timesteps, sigmas), None

  blocks = []
  for start in range(0, f, frames_per_block):
    forward = lambda cache, x, t, start=jnp.int32(start): call(params, cache, _twice(x), t, start)
    x0, _, cache, _ = blockwise.generate_block(
        forward, cache, noise[:, start : start + frames_per_block], denoise, context_noise
    )
    blocks.append(x0)
  return jnp.concatenate(blocks, axis=1)


def _schedule(solver: str, num_steps: int):
  if solver == "unipc":
    sigmas, timesteps = solvers.unipc_schedule(num_steps, shift=5.0)
    return timesteps, sigmas
  if solver == "euler":
    grid = fm.make_grid(num_steps, shift=5.0, extra_one_step=True)
    return np.asarray(grid.timesteps), np.append(np.asarray(grid.sigmas, np.float64), 0.0)
  raise ValueError(f"unknown solver {solver!r}; choose unipc or euler")


def _solve(solver, flow_fn, x, timesteps, sigmas):
  if solver == "unipc":
    return solvers.unipc(flow_fn, x, timesteps, sigmas)
  return solvers.euler(flow_fn, x, timesteps, sigmas)[0]
