"""One block of block-by-block generation over a KV cache (spec: algorithms.md §7.2, §8.2, §8.3).

Every cached sampler of the project makes a video the same way, block after block:

    x̂0 = denoise(G(·, ·; cache), noise of the block)      the block attends to the cached blocks
    cache ← G(cache_input(x̂0), context_noise; cache)      the refresh: the block's clean keys/values

`generate_block` is that step, shared by the streaming few-step sampler (and the `sample` CLI on
top of it), the self-forcing rollout of DMD training and the multi-step AR teacher sampler. They
differ only in `denoise` (`few_step`: re-noise the x0 prediction along a step list up to an exit
index; or a guided multi-step solver) and in the cache input (the rollout perturbs x̂0 at
`context_noise`, inference feeds it as it is). `scan_blocks` runs many blocks as one
`lax.scan`, so a compiled rollout does not grow with the number of blocks.
"""
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from cf_jax.diffusion import flow_matching as fm
from cf_jax.models import wan
from cf_jax.models.kv_cache import KVCache

# (cache, x [B, K, H, W, C], t []) -> (flow [B, K, H, W, C], cache with the block's rows rewritten)
Forward = Callable[[KVCache, jax.Array, jax.Array], tuple[jax.Array, KVCache]]
# (forward, cache, noise [B, K, H, W, C]) -> (x̂0 [B, K, H, W, C], record). The denoising calls leave
# the cache as it is: each call rewrites all of the block's rows before it attends to them, so what
# an earlier call wrote there is never read, and the refresh writes the rows that stay. Threading
# their caches through would make XLA keep a copy of the whole cache per call.
Denoise = Callable[[Forward, KVCache, jax.Array], tuple[jax.Array, Any]]


def cached_forward(model: wan.WanModel, params: Any, start_frame: jax.Array | int) -> Forward:
  """The generator on one block starting at frame `start_frame` (may be traced), all of its
  frames at one timestep."""

  def forward(cache, x, t):
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:2])  # [B, K]
    return model.apply({"params": params}, x, t, None, kv_cache=cache, start_frame=start_frame)

  return forward


@flax.struct.dataclass
class BlockTrace:
  """Every denoising call of one block; rows past the exit step stay zero."""

  inputs: jax.Array  # [n_steps, B, K, H, W, C] noisy input of each call
  flows: jax.Array  # [n_steps, B, K, H, W, C]
  x0s: jax.Array  # [n_steps, B, K, H, W, C]

  @classmethod
  def zeros(cls, num_steps: int, x: jax.Array) -> "BlockTrace":
    return cls(*(jnp.zeros((num_steps, *x.shape), x.dtype) for _ in range(3)))

  def record(self, i: jax.Array, x: jax.Array, flow: jax.Array, x0: jax.Array) -> "BlockTrace":
    return BlockTrace(self.inputs.at[i].set(x), self.flows.at[i].set(flow), self.x0s.at[i].set(x0))


def few_step(
    timesteps: jax.Array,  # [n_steps] warped step list
    exit_index: jax.Array | int,  # the call whose x̂0 is the block's output (may be traced)
    step_noise: Callable[[jax.Array], jax.Array],  # i -> ε_i [B, K, H, W, C], the noise after call i
    grid: fm.FlowGrid,
    snap: bool = True,
) -> Denoise:
  """The few-step generator's denoising (§8.2): x̂0 = x − σ(t_i)·G(x, t_i), then, before the
  exit, x ← add_noise(x̂0, ε_i, t_{i+1}). Records a `BlockTrace`."""

  def denoise(forward, cache, x):
    full = lambda t: jnp.full(x.shape[:2], t)  # [B, K]

    def call(i, x, trace):
      flow, _ = forward(cache, x, timesteps[i])
      x0 = fm.flow_to_x0(x, flow, full(timesteps[i]), grid, snap)
      return x0, trace.record(i, x, flow, x0)

    def step(i, carry):
      x0, trace = call(i, *carry)
      return fm.add_noise(x0, step_noise(i), full(timesteps[i + 1]), grid), trace

    carry = (x, BlockTrace.zeros(timesteps.shape[0], x))
    if not (isinstance(exit_index, int) and exit_index == 0):  # a 1-step list draws no noise
      carry = jax.lax.fori_loop(0, exit_index, step, carry)
    return call(exit_index, *carry)

  return denoise


def generate_block(
    forward: Forward,
    cache: KVCache,
    noise: jax.Array,  # [B, K, H, W, C]
    denoise: Denoise,
    context_noise: float,
    cache_input: Callable[[jax.Array], jax.Array] | None = None,  # x̂0 -> what the refresh sees
) -> tuple[jax.Array, jax.Array, KVCache, Any]:
  """Denoises a block and caches it: (x̂0, cache input, cache, the denoiser's record)."""
  x0, record = denoise(forward, cache, noise)
  x_cache = x0 if cache_input is None else cache_input(x0)
  _, cache = forward(cache, x_cache, context_noise)
  return x0, x_cache, cache, record


def scan_blocks(
    block_fn: Callable[[KVCache, jax.Array, jax.Array], tuple[KVCache, Any]],  # (cache, b, noise_b) -> (cache, out)
    cache: KVCache,
    noise: jax.Array,  # [B, F, H, W, C]
    frames_per_block: int,
    first_block: int = 0,
) -> tuple[KVCache, Any]:
  """Runs blocks first_block, first_block + 1, … of `noise` as one `lax.scan` (block b gets its
  index traced); every output leaf [B, K, …] comes back joined along frames, [B, n·K, …]."""
  b, f = noise.shape[:2]
  k = frames_per_block
  blocks = noise.reshape(b, f // k, k, *noise.shape[2:]).swapaxes(0, 1)[first_block:]  # [n, B, K, H, W, C]
  index = jnp.arange(first_block, f // k)  # [n]
  cache, out = jax.lax.scan(lambda c, xs: block_fn(c, *xs), cache, (index, blocks))
  join = lambda a: a.swapaxes(0, 1).reshape(b, -1, *a.shape[3:])  # [n, B, K, …] -> [B, n·K, …]
  return cache, jax.tree.map(join, out)
