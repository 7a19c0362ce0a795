"""Stage 2a: causal ODE regression (spec: algorithms.md §5).

The few-step generator regresses, in one step, the AR teacher's probability-flow ODE endpoint
from the states the teacher passed at the warped timesteps, each block conditioned on the
ground-truth history by teacher forcing. One timestep per video; plain MSE in x0 space.
"""
import jax
import jax.numpy as jnp
import ml_collections

from cf_jax.diffusion import flow_matching as fm
from cf_jax.models import wan
from cf_jax.training import losses
from cf_jax.training.denoiser import Denoiser
from cf_jax.training.stage import Network, Stage, build_model, generator_only


def loss(
    generator: Denoiser,
    params,
    ode_latents: jax.Array,  # [B, 6, F, H, W, C]: 4 trajectory states, ODE endpoint, clean latents
    context: jax.Array,  # [B, Lt, D_text]
    index: jax.Array,  # [B] int in [0, 4): which trajectory state each sample starts from
    timesteps: jax.Array,  # [4] warped step list = the timesteps of the 4 stored states
) -> tuple[jax.Array, dict[str, jax.Array]]:
  b, _, f = ode_latents.shape[:3]
  x_in = ode_latents[jnp.arange(b), index]  # [B, F, H, W, C]
  t = jnp.broadcast_to(timesteps[index][:, None], (b, f))  # [B, F]
  target, clean = ode_latents[:, -2], ode_latents[:, -1]
  _, x0 = generator.x0(params, x_in, t, context, clean_x=clean)
  return losses.mse(x0, target), {}


def make_stage(config: ml_collections.ConfigDict) -> Stage:
  layout = wan.Layout.block_causal(config.frames_per_block)
  network = Network(build_model(config, config.model), layout, config.init.generator, config.init.generator_entry)
  generator = Denoiser(network.model, layout, snap=config.quirks.snap_sigma)
  timesteps = fm.warp_denoising_steps(config.denoising_steps)  # [S]

  def loss_fn(params, batch, key):
    ode_latents = batch["ode_latents"]
    if ode_latents.shape[1] != timesteps.shape[0] + 2:
      raise ValueError(f"ODE pairs hold {ode_latents.shape[1]} states; the {timesteps.shape[0]}-step list "
                       f"needs {timesteps.shape[0] + 2}")
    index = jax.random.randint(key, ode_latents.shape[:1], 0, timesteps.shape[0])
    return loss(generator, params, ode_latents, batch["prompt_embeds"], index, timesteps)

  return generator_only(network, loss_fn, config, fields=("ode_latents", "prompt_embeds"))
