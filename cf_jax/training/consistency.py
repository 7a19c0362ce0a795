"""Stage 2b: causal consistency distillation, Causal Forcing++ (spec: algorithms.md §6).

On the 48-step grid τ_0 > … > τ_47, with one index k per step for the whole batch: the frozen AR
teacher takes one guided Euler step x_{τk} → x_{τk+1} (teacher forcing on the clean history), and
the student's x0 at (x_{τk}, τk) regresses the EMA target's x0 at (x_{τk+1}, τk+1). The EMA of
the student (decay 0.99, from step 0) is the target network.
"""
import jax
import jax.numpy as jnp
import ml_collections

from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import noise as noise_lib
from cf_jax.models import wan
from cf_jax.training import losses
from cf_jax.training import state as state_lib
from cf_jax.training.denoiser import Denoiser
from cf_jax.training.stage import Network, Stage, Update, build_model, negative_context


def loss(
    student: Denoiser,
    params,
    teacher_params,
    target_params,
    x0: jax.Array,  # [B, F, H, W, C] clean latents
    context: jax.Array,  # [B, Lt, D_text]
    negative: jax.Array,  # [B, Lt, D_text]
    noise: jax.Array,  # [B, F, H, W, C]
    k: jax.Array,  # [] int in [0, N − 1): the grid interval
    guidance_scale: float,
    bf16_timesteps: bool,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  grid = fm.ode_grid()
  b, f = x0.shape[:2]
  t_exact = jnp.full((b, f), grid.timesteps[k])
  # The networks (and the Euler step size) see bf16-rounded timesteps in the reference; the
  # noise level of x_t uses the exact grid σ (spec §6.2 steps 2–3).
  round_t = fm.bf16_round if bf16_timesteps else (lambda t: t)
  t, t_next = round_t(t_exact), round_t(jnp.full((b, f), grid.timesteps[k + 1]))
  x_t = fm.add_noise(x0, noise, t_exact, grid)

  teacher = jax.lax.stop_gradient
  pair = lambda a, c: jnp.concatenate([a, c])
  flows = student.flow(
      teacher(teacher_params), pair(x_t, x_t), pair(t, t), pair(context, negative), clean_x=pair(x0, x0)
  )
  flow_cond, flow_uncond = jnp.split(flows, 2)
  x_next = losses.guided_euler_target(x_t, flow_cond, flow_uncond, guidance_scale, t[0, 0], t_next[0, 0])

  _, x0_student = student.x0(params, x_t, t, context, clean_x=x0)
  _, x0_target = student.x0(jax.lax.stop_gradient(target_params), x_next, t_next, context, clean_x=x0)
  return losses.mse(x0_student, jax.lax.stop_gradient(x0_target)), {}


def make_stage(config: ml_collections.ConfigDict) -> Stage:
  layout = wan.Layout.block_causal(config.frames_per_block)
  model = build_model(config, config.model)
  networks = {
      "generator": Network(model, layout, config.init.generator, config.init.generator_entry),
      "teacher": Network(model, layout, config.init.teacher, config.init.teacher_entry),
  }
  student = Denoiser(model, layout, snap=config.quirks.snap_sigma)
  tx = state_lib.make_optimizer(config.optimizer)
  num_intervals = fm.ode_grid().timesteps.shape[0] - 1  # the last interval (τ_47 → 0) is never used

  def update(state, frozen, batch):
    def loss_fn(params, batch, key):
      x0 = batch["latents"]
      k_noise, k_index = jax.random.split(key)
      noise = noise_lib.normal(k_noise, x0.shape, x0.dtype)
      k = jax.random.randint(k_index, (), 0, num_intervals)
      negative = negative_context(frozen, x0.shape[0])
      return loss(student, params, frozen["teacher"], state.ema["generator"], x0, batch["prompt_embeds"],
                  negative, noise, k, config.guidance_scale, config.quirks.bf16_timesteps)

    state, metrics = state_lib.minimize(state, "generator", loss_fn, batch, state.key(0), tx, config.grad_accum)
    ema = state_lib.ema_update(state.ema["generator"], state.params["generator"], config.ema.decay)
    return state.replace(ema={"generator": ema}), metrics

  return Stage(
      networks=networks,
      trainable={"generator": tx},
      ema=("generator",),
      updates=(Update("generator", update),),
      fields=("latents", "prompt_embeds"),
      needs_negative_prompt=True,
  )
