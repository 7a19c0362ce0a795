"""The self-forcing rollout of DMD training (spec: algorithms.md §7.2).

The causal few-step generator produces a whole video block by block from its own outputs, with
the KV cache it would use at inference. Each block runs its step list up to a random exit index
(stochastic gradient truncation): steps before the exit re-noise the x0 prediction with fresh
noise; the exit step's x0 is the block's output; then the output, perturbed at `context_noise`,
is run once more to write clean keys/values into the cache.

In the reference only the exit forwards carry gradient and every cached key/value comes from a
pass without gradient, so no gradient crosses blocks. Here the rollout runs without gradient and
records each block's exit input, exit timestep and cache input; `exit_forward` then recomputes
all exits in one teacher-forcing forward whose clean half is the cache inputs with their
keys/values detached — the same numbers (the attention pattern of a noisy block over clean
earlier blocks is the KV-cache pattern) with the gradient the reference gets.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import noise as noise_lib
from cf_jax.models import wan
from cf_jax.models.kv_cache import KVCache
from cf_jax.training.denoiser import Denoiser


@flax.struct.dataclass
class Rollout:
  output: jax.Array  # [B, F, H, W, C] each block's exit-step x0
  exit_input: jax.Array  # [B, F, H, W, C] each block's input at its exit step
  exit_t: jax.Array  # [B, F] each block's exit timestep
  cache_input: jax.Array  # [B, F, H, W, C] what the cache-refresh pass saw (output at context noise)


def draw_exit_indices(key: jax.Array, num_steps: int, first_block_num_steps: int | None) -> tuple[jax.Array, jax.Array]:
  """(exit of block 0, exit of the other blocks): one draw shared by every block
  (`same_step_across_blocks`), plus a separate one for block 0 when it has its own list."""
  k_rest, k_first = jax.random.split(key)
  rest = jax.random.randint(k_rest, (), 0, num_steps)
  first = rest if first_block_num_steps is None else jax.random.randint(k_first, (), 0, first_block_num_steps)
  return first, rest


def self_forcing_rollout(
    generator: Denoiser,
    params: Any,
    context: jax.Array,  # [B, Lt, text_dim]
    noise: jax.Array,  # [B, F, H, W, C]
    steps: tuple[float, ...],  # warped step list
    first_block_steps: tuple[float, ...] | None,
    exits: tuple[jax.Array, jax.Array],  # from `draw_exit_indices`
    key: jax.Array,  # fresh noise between steps and for the cache input
    context_noise: float = 0.0,
    snap_context_noise: bool = True,
) -> Rollout:
  """Runs the generator over the whole video without gradient.

  With `snap_context_noise` (the reference), the cache input is add_noise(x̂, ε, context_noise)
  with σ snapped to the grid, i.e. 0.995·x̂ + 0.005·ε at context_noise = 0 (spec §11.3); without
  it, σ = context_noise/1000 exactly (x̂ itself at 0, as at inference).
  """
  params = jax.lax.stop_gradient(params)
  model, grid = generator.model, generator.grid
  b, f, height, width, _ = noise.shape
  k = generator.layout.frames_per_block
  text_cache = wan.WanTextCache(model.config, model.dtype, model.param_dtype).apply({"params": params}, context)
  cache = KVCache.create(text_cache, f, model.config.tokens_per_frame(height, width), dtype=model.dtype)

  def call(cache, x, t, start):
    flow, cache = model.apply({"params": params}, x, jnp.full(x.shape[:2], t), None, kv_cache=cache, start_frame=start)
    return fm.flow_to_x0(x, flow, jnp.full(x.shape[:2], t), grid, generator.snap), cache

  outputs, exit_inputs, exit_ts, cache_inputs = [], [], [], []
  for block, start in enumerate(range(0, f, k)):
    first = block == 0 and first_block_steps is not None
    timesteps = jnp.asarray(first_block_steps if first else steps, jnp.float32)  # [S]
    exit_index = exits[0] if block == 0 else exits[1]
    step_key, cache_key = jax.random.split(jax.random.fold_in(key, block))

    def denoise(i, carry, timesteps=timesteps, step_key=step_key, start=start):
      x, cache = carry
      x0, cache = call(cache, x, timesteps[i], start)
      eps = noise_lib.normal(jax.random.fold_in(step_key, i), x.shape, x.dtype)
      return fm.add_noise(x0, eps, jnp.full(x.shape[:2], timesteps[i + 1]), grid), cache

    x, cache = jax.lax.fori_loop(0, exit_index, denoise, (noise[:, start : start + k], cache))
    t_exit = timesteps[exit_index]
    x0, cache = call(cache, x, t_exit, start)
    eps = noise_lib.normal(cache_key, x0.shape, x0.dtype)
    x_cache = fm.add_noise(x0, eps, jnp.full(x0.shape[:2], context_noise), grid, snap_context_noise)
    _, cache = call(cache, x_cache, context_noise, start)
    outputs.append(x0), exit_inputs.append(x), cache_inputs.append(x_cache)
    exit_ts.append(jnp.full(x0.shape[:2], t_exit))
  cat = lambda xs: jnp.concatenate(xs, axis=1)
  return Rollout(cat(outputs), cat(exit_inputs), cat(exit_ts), cat(cache_inputs))


def exit_forward(
    generator: Denoiser, params: Any, context: jax.Array, rollout: Rollout, context_noise: float = 0.0
) -> jax.Array:
  """The rollout's output x̂ [B, F, H, W, C] with the gradient of the reference's exit forwards.

  One teacher-forcing forward: the noisy half is every block's exit input at its exit timestep,
  the clean half the cache inputs at `context_noise`, their keys/values detached.
  """
  cache_input = jax.lax.stop_gradient(rollout.cache_input)
  aug_t = jnp.full(rollout.exit_t.shape, context_noise, jnp.float32)
  _, x0 = generator.x0(
      params, rollout.exit_input, rollout.exit_t, context, clean_x=cache_input, aug_t=aug_t, detach_clean=True
  )
  return x0
