"""Stage 3: asymmetric DMD with the self-forcing rollout (spec: algorithms.md §7).

Networks: the causal few-step generator (trained), a frozen bidirectional real score (the 14B
teacher, guided) and a trainable bidirectional fake score, the critic. Both scores convert flow
to x0 on the shift-8 grid, like the reference's wrappers.

  generator update (every `dfake_gen_update_ratio` iterations): roll out a video, noise it at a
      DMD timestep, and push x̂ along (x0_fake − x0_real)/n;
  critic update (every iteration): roll out without gradient and fit the fake score's flow to
      the generated video (denoising loss).
"""
import jax
import jax.numpy as jnp
import ml_collections

from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import noise as noise_lib
from cf_jax.models import wan
from cf_jax.training import losses
from cf_jax.training import rollout as rollout_lib
from cf_jax.training import state as state_lib
from cf_jax.training.denoiser import GENERATOR_SHIFT, SCORE_SHIFT, Denoiser
from cf_jax.training.stage import Network, Stage, Update, build_model, negative_context


def noisy_sample(key: jax.Array, x: jax.Array, cfg: ml_collections.ConfigDict):
  """(x_t, t [B, F], noise): one DMD timestep per sample (shifted integer draw clamped to
  [min_step, max_step]), noise added on the generator's shift-5 grid, without gradient."""
  k_t, k_noise = jax.random.split(key)  # the reference draws the timestep, then the noise
  b, f = x.shape[:2]
  u = jax.random.randint(k_t, (b,), 0, fm.NUM_TRAIN_TIMESTEPS)
  t = jnp.broadcast_to(fm.dmd_timestep(u, cfg.timestep_shift, cfg.min_step, cfg.max_step)[:, None], (b, f))
  noise = noise_lib.normal(k_noise, x.shape, x.dtype)
  x_t = fm.add_noise(jax.lax.stop_gradient(x), noise, t, fm.training_grid(GENERATOR_SHIFT))
  return x_t, t, noise


def generator_loss(generated, x_t, t, context, negative, critic: Denoiser, critic_params,
                   real: Denoiser, real_params, guidance_scale: float):
  """DMD loss of the generator's video `generated` [B, F, H, W, C] at the noisy sample (x_t, t)."""
  _, fake_x0 = critic.x0(jax.lax.stop_gradient(critic_params), x_t, t, context)
  pair = lambda a, b: jnp.concatenate([a, b])
  _, real_x0 = real.x0(jax.lax.stop_gradient(real_params), pair(x_t, x_t), pair(t, t), pair(context, negative))
  real_cond, real_uncond = jnp.split(real_x0, 2)
  parts = losses.dmd_gradient(jax.lax.stop_gradient(generated), fake_x0, real_cond, real_uncond, guidance_scale)
  grad = jax.lax.stop_gradient(parts["grad"])
  return losses.dmd_loss(generated, grad), {"dmdtrain_gradient_norm": jnp.mean(jnp.abs(grad))}


def critic_loss(critic: Denoiser, critic_params, generated, x_t, t, noise, context):
  """Flow loss of the fake score on the generated video; its x0 (shift-8 grid) is converted back
  to flow on the generator's shift-5 grid, as the reference does (spec §7.4)."""
  _, x0 = critic.x0(critic_params, x_t, t, context)
  flow = fm.x0_to_flow(x_t, x0, t, fm.training_grid(GENERATOR_SHIFT))
  return losses.flow_loss(flow, jax.lax.stop_gradient(generated), noise)


def make_stage(config: ml_collections.ConfigDict) -> Stage:
  cfg = config.dmd
  init = config.init
  causal = wan.Layout.block_causal(config.frames_per_block)
  bidirectional = wan.Layout.bidirectional()
  networks = {
      "generator": Network(build_model(config, config.model), causal, init.generator, init.generator_entry),
      "critic": Network(build_model(config, cfg.critic_model), bidirectional, init.critic, init.critic_entry),
      "real_score": Network(build_model(config, cfg.real_model), bidirectional, init.real_score,
                            init.real_score_entry),
  }
  snap = config.quirks.snap_sigma
  generator = Denoiser(networks["generator"].model, causal, snap=snap)
  critic = Denoiser(networks["critic"].model, bidirectional, SCORE_SHIFT, snap)
  real = Denoiser(networks["real_score"].model, bidirectional, SCORE_SHIFT, snap)
  steps = tuple(float(t) for t in fm.warp_denoising_steps(config.denoising_steps))
  first = cfg.first_block_denoising_steps
  first = tuple(float(t) for t in fm.warp_denoising_steps(first)) if first else None
  video_shape = (config.data.num_frames, config.data.latent_height, config.data.latent_width,
                 networks["generator"].model.config.in_dim)
  tx_gen = state_lib.make_optimizer(config.optimizer)
  tx_critic = state_lib.make_optimizer(config.critic_optimizer)

  def rollout(params, context, key):
    k_noise, k_exit, k_steps = jax.random.split(key, 3)
    noise = noise_lib.normal(k_noise, (context.shape[0], *video_shape), jnp.float32)
    exits = rollout_lib.draw_exit_indices(k_exit, len(steps), len(first) if first else None)
    return rollout_lib.self_forcing_rollout(generator, params, context, noise, steps, first, exits, k_steps,
                                            cfg.context_noise, config.quirks.snap_context_noise)

  def generator_update(state, frozen, batch):
    def loss_fn(params, batch, key):
      context = batch["prompt_embeds"]
      k_roll, k_sample = jax.random.split(key)
      roll = rollout(params, context, k_roll)
      generated = rollout_lib.exit_forward(generator, params, context, roll, cfg.context_noise)
      x_t, t, _ = noisy_sample(k_sample, generated, cfg)
      return generator_loss(generated, x_t, t, context, negative_context(frozen, context.shape[0]), critic,
                            state.params["critic"], real, frozen["real_score"], config.guidance_scale)

    n = state.step
    state, metrics = state_lib.minimize(state, "generator", loss_fn, batch, state.key(0), tx_gen, config.grad_accum)
    new = state.params["generator"]
    # The EMA starts at `ema.start_step` from the generator of that moment (spec §7.5): until
    # then the shadow simply follows the generator.
    ema = jax.lax.cond(
        n < config.ema.start_step,
        lambda: new,
        lambda: state_lib.ema_update(state.ema["generator"], new, config.ema.decay),
    )
    return state.replace(ema={"generator": ema}), metrics

  def critic_update(state, frozen, batch):
    del frozen

    def loss_fn(params, batch, key):
      context = batch["prompt_embeds"]
      k_roll, k_sample = jax.random.split(key)
      generated = rollout(state.params["generator"], context, k_roll).output
      x_t, t, noise = noisy_sample(k_sample, generated, cfg)
      return critic_loss(critic, params, generated, x_t, t, noise, context), {}

    return state_lib.minimize(state, "critic", loss_fn, batch, state.key(1), tx_critic, config.grad_accum)

  return Stage(
      networks=networks,
      trainable={"generator": tx_gen, "critic": tx_critic},
      ema=("generator",),
      updates=(Update("generator", generator_update, cfg.dfake_gen_update_ratio), Update("critic", critic_update)),
      fields=("prompt_embeds",),
      needs_negative_prompt=True,
  )
