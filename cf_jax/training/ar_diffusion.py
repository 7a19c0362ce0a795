"""Stage 1: autoregressive diffusion with teacher forcing (spec: algorithms.md §3).

The block-causal generator, initialized from the bidirectional Wan weights, learns to denoise
every block given the clean earlier blocks: one forward over [clean; noisy] tokens with the
teacher-forcing mask. Timesteps are drawn per block; the loss is the flow MSE weighted by the
grid's training weights.

With `causal = False` the same loss trains a bidirectional model, one timestep per video and no
clean context: the Wan pretraining objective, which the toy recipe uses to make its teacher.
"""
import jax
import jax.numpy as jnp
import ml_collections

from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import noise as noise_lib
from cf_jax.models import wan
from cf_jax.training import losses
from cf_jax.training.denoiser import Denoiser
from cf_jax.training.stage import Network, Stage, build_model, generator_only


def loss(
    generator: Denoiser,
    params,
    x0: jax.Array,  # [B, F, H, W, C] clean latents
    context: jax.Array,  # [B, Lt, D_text]
    noise: jax.Array,  # [B, F, H, W, C]
    index: jax.Array,  # [B, F] int grid indices as drawn, one per frame
    bf16_timesteps: bool,
    aug_index: jax.Array | None = None,  # [B, F] grid indices of the context noise (augmentation)
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The teacher-forcing loss for given random draws (spec §3.2 steps 2–8).

  Each block takes its first frame's index; with `bf16_timesteps` (the reference in mixed
  precision) t is rounded to bfloat16 before it reaches the noise, the model and the weights.
  """
  grid = generator.grid
  k = generator.layout.frames_per_block if generator.layout.causal else x0.shape[1]
  t = grid.timesteps[losses.tie_to_blocks(index, k)]  # [B, F]
  if bf16_timesteps:
    t = fm.bf16_round(t)
  x_t = fm.add_noise(x0, noise, t, grid, generator.snap)
  clean, aug_t = (x0 if generator.layout.causal else None), None
  if aug_index is not None:
    aug_t = grid.timesteps[losses.tie_to_blocks(aug_index, k)]
    clean = fm.add_noise(x0, noise, aug_t, grid, generator.snap)
  flow = generator.flow(params, x_t, t, context, clean_x=clean, aug_t=aug_t)
  value, per_frame = losses.teacher_forcing_loss(flow, x0, noise, t, grid, fm.training_weights(grid))
  return value, {"flow_mse": jnp.mean(per_frame)}


def make_stage(config: ml_collections.ConfigDict) -> Stage:
  layout = wan.Layout.block_causal(config.frames_per_block) if config.causal else wan.Layout.bidirectional()
  network = Network(build_model(config, config.model), layout, config.init.generator, config.init.generator_entry)
  generator = Denoiser(network.model, layout, snap=config.quirks.snap_sigma)
  aug_min = config.noise_augmentation_max_timestep

  def loss_fn(params, batch, key):
    x0 = batch["latents"]
    k_noise, k_index, k_aug = jax.random.split(key, 3)
    # The reference draws the noise first, then the indices.
    noise = noise_lib.normal(k_noise, x0.shape, x0.dtype)
    index = jax.random.randint(k_index, x0.shape[:2], 0, fm.NUM_TRAIN_TIMESTEPS)
    # Context noise augmentation draws indices in [M, 1000): the low-noise tail (spec §11.13).
    aug = jax.random.randint(k_aug, x0.shape[:2], aug_min, fm.NUM_TRAIN_TIMESTEPS) if aug_min > 0 else None
    return loss(generator, params, x0, batch["prompt_embeds"], noise, index, config.quirks.bf16_timesteps, aug)

  return generator_only(network, loss_fn, config, fields=("latents", "prompt_embeds"))
