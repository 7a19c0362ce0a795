"""The training losses of every stage as pure functions of predictions and targets.

Spec: algorithms.md §3.2 (stage-1 teacher-forcing loss), §5 (ODE regression), §6.2 (consistency
distillation), §7.3 (DMD generator loss), §7.4 (critic flow loss). Network calls and random draws
live in the stage modules; these functions only see arrays, so each is checked against the
reference's recorded intermediates.
"""
import jax
import jax.numpy as jnp

from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import solvers


def tie_to_blocks(values: jax.Array, frames_per_block: int) -> jax.Array:
  """Gives every frame of a block the value of the block's first frame. values: [B, F]."""
  b, f = values.shape
  first = values[:, ::frames_per_block]  # [B, F/K]
  return jnp.repeat(first, frames_per_block, axis=1)[:, :f]  # [B, F]


def _frame_mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error over each frame's (H, W, C), in float32. [B, F, H, W, C] -> [B, F]."""
  err = pred.astype(jnp.float32) - target.astype(jnp.float32)
  return jnp.mean(jnp.square(err), axis=(2, 3, 4))


def teacher_forcing_loss(
    flow_pred: jax.Array,  # [B, F, H, W, C]
    x0: jax.Array,  # [B, F, H, W, C] clean latents
    noise: jax.Array,  # [B, F, H, W, C]
    t: jax.Array,  # [B, F] timesteps the model saw
    grid: fm.FlowGrid,
    weights: jax.Array,  # [N] per-grid-entry weights (`fm.training_weights`)
) -> tuple[jax.Array, jax.Array]:
  """Stage-1 loss: mean over (B, F) of w(t)·‖v̂ − (ε − x0)‖² / (H·W·C). Returns (loss, per-frame
  error [B, F])."""
  per_frame = _frame_mse(flow_pred, fm.flow_target(x0, noise))  # [B, F]
  w = fm.training_weight(grid, weights, t)  # [B, F]
  return jnp.mean(w * per_frame), per_frame


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Plain mean squared error over every element, in float32: the ODE-regression loss (x0 vs
  the teacher's ODE endpoint) and the consistency loss (x0 vs the EMA target's x0)."""
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def dmd_gradient(
    generated: jax.Array,  # [B, F, H, W, C] generator output x̂
    fake_x0: jax.Array,  # [B, F, H, W, C] fake score's x0 at (x_t, t)
    real_cond_x0: jax.Array,  # [B, F, H, W, C]
    real_uncond_x0: jax.Array,  # [B, F, H, W, C]
    guidance_scale: float,
) -> dict[str, jax.Array]:
  """The distribution-matching direction Δ = (x0_fake − x0_real) / n (spec §7.3 steps 4–5).

  The real score's guidance is x0_c + g·(x0_c − x0_u) (weight 1 + g in the usual convention), and
  n is the per-sample mean |x̂ − x0_real| over the whole video; non-finite values become 0.
  """
  g = generated.astype(jnp.float32)
  real = real_cond_x0.astype(jnp.float32)
  real = real + guidance_scale * (real - real_uncond_x0.astype(jnp.float32))
  unnormalized = fake_x0.astype(jnp.float32) - real
  normalizer = jnp.mean(jnp.abs(g - real), axis=(1, 2, 3, 4), keepdims=True)  # [B, 1, 1, 1, 1]
  grad = jnp.nan_to_num(unnormalized / normalizer, nan=0.0, posinf=0.0, neginf=0.0)
  return {"real_cfg_x0": real, "unnormalized": unnormalized, "normalizer": normalizer, "grad": grad}


def dmd_loss(generated: jax.Array, grad: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """0.5·mean ‖x̂ − sg(x̂ − Δ)‖²: a surrogate whose gradient w.r.t. x̂ is Δ / N (over the elements
  `mask` keeps, all by default)."""
  g = generated.astype(jnp.float32)
  sq = jnp.square(g - jax.lax.stop_gradient(g - grad))
  if mask is None:
    return 0.5 * jnp.mean(sq)
  return 0.5 * jnp.sum(jnp.where(mask, sq, 0.0)) / jnp.sum(mask)


def flow_loss(flow_pred: jax.Array, x0: jax.Array, noise: jax.Array) -> jax.Array:
  """The critic's loss mean ‖v̂ − (ε − x0)‖², unweighted."""
  return mse(flow_pred, fm.flow_target(x0, noise))


def guided_euler_target(
    x_t: jax.Array,  # [B, F, H, W, C]
    flow_cond: jax.Array,
    flow_uncond: jax.Array,
    guidance_scale: float,
    t: jax.Array,  # [] timestep of x_t
    t_next: jax.Array,  # [] next (smaller) timestep
) -> jax.Array:
  """The consistency teacher's Euler step x_t' = x_t − ((t − t')/1000)·(v_u + g·(v_c − v_u))
  (spec §6.2 step 4), in the dtype of x_t as the reference computes it in bf16."""
  v = solvers.guidance(flow_cond, flow_uncond, guidance_scale).astype(x_t.dtype)
  dt = ((t - t_next) / fm.NUM_TRAIN_TIMESTEPS).astype(x_t.dtype)
  return x_t - dt * v
