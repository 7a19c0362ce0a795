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

from cf_jax.diffusion import blockwise
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

  The blocks run as one `lax.scan` (block 0 before it when it has its own step list), so the
  compiled program does not grow with the number of blocks. Block b draws its noise from
  fold_in(key, b): ε_i after step i from fold_in(k_steps, i), the cache input's from k_cache,
  where (k_steps, k_cache) = split(fold_in(key, b)).

  With `snap_context_noise` (the reference), the cache input is add_noise(x̂, ε, context_noise)
  with σ snapped to the grid, i.e. 0.995·x̂ + 0.005·ε at context_noise = 0 (spec §11.3); without
  it, σ = context_noise/1000 exactly (x̂ itself at 0, as at inference).
  """
  params = jax.lax.stop_gradient(params)
  model, grid = generator.model, generator.grid
  f, height, width = noise.shape[1:4]
  k = generator.layout.frames_per_block
  text_cache = wan.WanTextCache(model.config, model.dtype, model.param_dtype).apply({"params": params}, context)
  cache = KVCache.create(text_cache, f, model.config.tokens_per_frame(height, width), dtype=model.dtype)

  def block(cache, b, block_noise, timesteps, exit_index):  # block_noise [B, K, H, W, C]
    step_key, cache_key = jax.random.split(jax.random.fold_in(key, b))
    step_noise = lambda i: noise_lib.normal(jax.random.fold_in(step_key, i), block_noise.shape, block_noise.dtype)

    def cache_input(x0):
      eps = noise_lib.normal(cache_key, x0.shape, x0.dtype)
      return fm.add_noise(x0, eps, jnp.full(x0.shape[:2], context_noise), grid, snap_context_noise)

    denoise = blockwise.few_step(timesteps, exit_index, step_noise, grid, generator.snap)
    x0, x_cache, cache, trace = blockwise.generate_block(
        blockwise.cached_forward(model, params, b * k), cache, block_noise, denoise, context_noise, cache_input
    )
    exit_t = jnp.full(x0.shape[:2], timesteps[exit_index])  # [B, K]
    return cache, Rollout(x0, trace.inputs[exit_index], exit_t, x_cache)

  steps = jnp.asarray(steps, jnp.float32)  # [S]
  if first_block_steps is None:
    rest = lambda cache, b, x: block(cache, b, x, steps, jnp.where(b == 0, exits[0], exits[1]))
    return blockwise.scan_blocks(rest, cache, noise, k)[1]
  cache, first = block(cache, 0, noise[:, :k], jnp.asarray(first_block_steps, jnp.float32), exits[0])
  _, rest = blockwise.scan_blocks(lambda cache, b, x: block(cache, b, x, steps, exits[1]), cache, noise, k, 1)
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=1), first, rest)


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
