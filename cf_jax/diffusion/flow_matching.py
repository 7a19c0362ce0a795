"""Flow-matching noise schedule as pure functions (spec: algorithms.md §1, §7.3, §11.3-4).

The forward process is x_t = (1 − σ)·x0 + σ·ε with network timestep t = 1000·σ, and the network
predicts the flow v = ε − x0. The reference never evaluates σ(t) directly: it snaps every query
timestep to the nearest entry of a descending grid and uses that entry's σ (so t = 0 means the
grid's smallest σ, 0.00498 on the shift-5 training grid, never σ = 0). The functions below follow
that by default (`snap=True`); `snap=False` gives the clean σ = t/1000.

Timestep arrays `t` are a prefix of the data's shape (`[B]` for `[B, ...]`, `[B, F]` for
`[B, F, H, W, C]`, or a scalar); σ broadcasts over the remaining trailing axes.
"""
import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


@flax.struct.dataclass
class FlowGrid:
  """A descending timestep grid and its noise levels, t = 1000·σ (both float32)."""

  timesteps: jax.Array  # [N]
  sigmas: jax.Array  # [N]
  shift: float = flax.struct.field(pytree_node=False, default=5.0)


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
  """float32 linspace computed the way the reference's torch kernel does, for bit-exact grids.

  torch evaluates start + step·i for the first half and end − step·(steps − 1 − i) for the second,
  in float32 with the multiply-add fused (one rounding). The product of a float32 and a small
  integer is exact in float64 and so is the sum here, so float64 then one cast is that FMA.
  """
  f32 = np.float32
  step = np.float64((f32(end) - f32(start)) / f32(steps - 1))
  i = np.arange(steps, dtype=np.float64)
  head = step * i + np.float64(f32(start))
  tail = np.float64(f32(end)) - step * (steps - 1 - i)
  return np.where(i < steps // 2, head, tail).astype(f32)  # [steps]


@functools.cache
def _grid_arrays(num_steps: int, shift: float, extra_one_step: bool) -> tuple[np.ndarray, np.ndarray]:
  f32 = np.float32
  if extra_one_step:
    s = _linspace_f32(1.0, 0.0, num_steps + 1)[:-1]  # [N]
  else:
    s = _linspace_f32(1.0, 0.0, num_steps)  # [N]
  sigmas = (f32(shift) * s) / (f32(1.0) + f32(shift - 1.0) * s)  # [N]
  return sigmas * f32(NUM_TRAIN_TIMESTEPS), sigmas


def make_grid(num_steps: int, shift: float, extra_one_step: bool = True) -> FlowGrid:
  """The grid of FlowMatchScheduler.set_timesteps(num_steps) with σ_min = 0, σ_max = 1.

  s runs linearly from 1 to 0 (dropping the final 0 with `extra_one_step`), σ = shift·s/(1 +
  (shift − 1)·s) and t = 1000·σ, all in float32 as the reference, which matches its stored grids
  bit for bit. The numbers are cached, the arrays are not: a grid built inside a jitted function
  holds that trace's constants and must not outlive it.
  """
  timesteps, sigmas = _grid_arrays(num_steps, float(shift), extra_one_step)
  return FlowGrid(jnp.asarray(timesteps, jnp.float32), jnp.asarray(sigmas, jnp.float32), float(shift))


def training_grid(shift: float = 5.0) -> FlowGrid:
  """The 1000-step grid every diffusion wrapper uses: shift 5 for the generator, 8 for the
  DMD real/fake scores (spec §1.6)."""
  return make_grid(NUM_TRAIN_TIMESTEPS, shift)


def ode_grid() -> FlowGrid:
  """The 48-step shift-5 grid of ODE-pair generation and consistency distillation; its entries
  0, 12, 24, 36 are the warped 4-step list."""
  return make_grid(48, 5.0)


def training_weights(grid: FlowGrid) -> jax.Array:
  """Per-grid-entry loss weights of the Stage-1 diffusion loss (spec §1.2), mean 1 over the grid.

  A Gaussian bump in t centred at N/2 with width N, minus its minimum; with the 1000-grid this is
  exactly 0 at t = 1000. Defined for the 1000-step training grids (the reference uses N both as
  the grid length and the timestep scale); computed in float64 from the grid's numbers.
  """
  n = grid.timesteps.shape[0]
  if n != NUM_TRAIN_TIMESTEPS:
    raise ValueError(f"training weights are defined on the {NUM_TRAIN_TIMESTEPS}-step grid, not {n} steps")
  t = np.asarray(_grid_arrays(n, grid.shift, True)[0], np.float64)  # [N]
  y = np.exp(-2.0 * ((t - n / 2) / n) ** 2)  # [N]
  y = y - y.min()
  return jnp.asarray(y * (n / y.sum()), jnp.float32)  # [N]


def nearest_index(grid: FlowGrid, t: jax.Array) -> jax.Array:
  """Index of the grid timestep nearest to each query (first one on ties), any shape of t."""
  t = jnp.asarray(t, jnp.float32)
  dist = jnp.abs(grid.timesteps - t[..., None])  # [*t, N]
  return jnp.argmin(dist, axis=-1)  # [*t]


def sigma_at(grid: FlowGrid, t: jax.Array, snap: bool = True) -> jax.Array:
  """σ for each timestep: the nearest grid entry's (reference) or t/1000 (`snap=False`)."""
  t = jnp.asarray(t, jnp.float32)
  if snap:
    return grid.sigmas[nearest_index(grid, t)]  # [*t]
  return t / NUM_TRAIN_TIMESTEPS  # [*t]


def _expand(s: jax.Array, x: jax.Array) -> jax.Array:
  """Appends unit axes so a per-prefix value broadcasts against x."""
  return s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array, grid: FlowGrid, snap: bool = True) -> jax.Array:
  """x_t = (1 − σ(t))·x0 + σ(t)·ε, in the dtype of `noise` as the reference."""
  sigma = _expand(sigma_at(grid, t, snap), x0)  # [*t, 1, ...]
  out = (1.0 - sigma) * x0.astype(jnp.float32) + sigma * noise.astype(jnp.float32)
  return out.astype(noise.dtype)


def flow_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """The flow (velocity) regression target ε − x0; independent of t."""
  return noise - x0


def flow_to_x0(x_t: jax.Array, flow: jax.Array, t: jax.Array, grid: FlowGrid, snap: bool = True) -> jax.Array:
  """x0 = x_t − σ(t)·v, the wrappers' conversion of the network output (in float32 here, float64
  in the reference: they differ by about an ulp)."""
  sigma = _expand(sigma_at(grid, t, snap), x_t)  # [*t, 1, ...]
  return (x_t.astype(jnp.float32) - sigma * flow.astype(jnp.float32)).astype(x_t.dtype)


def x0_to_flow(x_t: jax.Array, x0: jax.Array, t: jax.Array, grid: FlowGrid, snap: bool = True) -> jax.Array:
  """v = (x_t − x0)/σ(t), used on the critic's x0 predictions."""
  sigma = _expand(sigma_at(grid, t, snap), x_t)  # [*t, 1, ...]
  return ((x_t.astype(jnp.float32) - x0.astype(jnp.float32)) / sigma).astype(x_t.dtype)


def training_weight(grid: FlowGrid, weights: jax.Array, t: jax.Array) -> jax.Array:
  """Loss weight of each timestep: that of its nearest grid entry. weights: [N]."""
  return weights[nearest_index(grid, t)]  # [*t]


def warp_denoising_steps(steps: Sequence[int] | jax.Array, shift: float = 5.0) -> jax.Array:
  """Maps config step lists in unwarped units d ∈ (0, 1000] to timesteps: t = T[1000 − d], T the
  1000-grid with a 0 appended, so t = 1000·S(d/1000), e.g. [1000, 750, 500, 250] →
  [1000, 937.5, 833.33, 625]. A trailing d = 0 maps to t = 0 (the pipelines then drop it)."""
  grid = training_grid(shift)
  extended = jnp.concatenate([grid.timesteps, jnp.zeros((1,), jnp.float32)])  # [1001]
  steps = jnp.asarray(steps, jnp.int32)  # [S]
  return extended[NUM_TRAIN_TIMESTEPS - steps]  # [S]


def euler_step(grid: FlowGrid, flow: jax.Array, t: jax.Array, x: jax.Array, reference_quirk: bool = True) -> jax.Array:
  """One Euler step to the next grid entry: x + v·(σ_next − σ), σ_next = 0 after the last entry.

  With `reference_quirk` (the reference's behaviour), if any element of t sits on the last grid
  entry then every element steps to σ = 0; without it only those elements do.
  """
  idx = nearest_index(grid, t)  # [*t]
  n = grid.sigmas.shape[0]
  sigma = grid.sigmas[idx]  # [*t]
  is_last = idx + 1 >= n  # [*t]
  sigma_next = jnp.where(is_last, 0.0, grid.sigmas[jnp.minimum(idx + 1, n - 1)])  # [*t]
  if reference_quirk:
    sigma_next = jnp.where(jnp.any(is_last), jnp.zeros_like(sigma_next), sigma_next)
  return euler_step_between(x, flow, sigma, sigma_next)


def euler_step_between(x: jax.Array, flow: jax.Array, sigma_from: jax.Array, sigma_to: jax.Array) -> jax.Array:
  """x + (σ_to − σ_from)·v, for samplers that carry their own σ schedule; σ's are prefix-shaped."""
  sigma_from = _expand(jnp.asarray(sigma_from, jnp.float32), x)
  sigma_to = _expand(jnp.asarray(sigma_to, jnp.float32), x)
  return (x.astype(jnp.float32) + flow.astype(jnp.float32) * (sigma_to - sigma_from)).astype(x.dtype)


@functools.cache
def _dmd_table(shift: float, min_step: int, max_step: int, num_train_timesteps: int) -> np.ndarray:
  """dmd_timestep for every integer draw, in float32 numpy: XLA turns division by a constant into
  a multiply by its reciprocal, which is an ulp off the reference's true division."""
  f32 = np.float32
  s = np.arange(num_train_timesteps, dtype=f32) / f32(num_train_timesteps)  # [T]
  if shift > 1:
    s = (f32(shift) * s) / (f32(1.0) + f32(shift - 1.0) * s)
  return np.clip(s * f32(num_train_timesteps), f32(min_step), f32(max_step))  # [T]


def dmd_timestep(
    u_int: jax.Array,
    shift: float = 5.0,
    min_step: int = 20,
    max_step: int = 980,
    num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
) -> jax.Array:
  """DMD/critic timestep from an integer draw u ∈ [0, 1000): t = 1000·S(u/1000) clamped to
  [min_step, max_step] (spec §7.3 step 1). Continuous: not snapped to any grid."""
  table = jnp.asarray(_dmd_table(float(shift), min_step, max_step, num_train_timesteps))  # [T]
  return table[jnp.clip(jnp.asarray(u_int), 0, num_train_timesteps - 1)]  # [*u]


def bf16_round(t: jax.Array) -> jax.Array:
  """t cast to bfloat16 (round to nearest even) and back, as the reference's bf16 training casts
  timesteps before snapping them (spec §11.4; t ≥ 998 becomes 1000)."""
  return jnp.asarray(t, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32)
