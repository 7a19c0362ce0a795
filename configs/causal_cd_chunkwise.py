"""Stage 2b, chunkwise: causal consistency distillation (Causal Forcing++) against the
stage-1 AR teacher. Reads latent videos with prompt embeddings; writes export/generator_ema.

  python -m cf_jax.train --config configs/causal_cd_chunkwise.py --workdir runs/causal_cd_chunkwise
  python -m cf_jax.train --config configs/causal_cd_chunkwise.py:tiny --workdir /tmp/causal_cd_chunkwise   # tiny model, synthetic data, CPU
"""
import ml_collections

from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.base("consistency", frames_per_block=3)
  # Student, EMA target and teacher all start from the stage-1 AR teacher.
  c.init = base.init(generator="runs/ar_diffusion_chunkwise/export/generator",
                     teacher="runs/ar_diffusion_chunkwise/export/generator")
  c.data.path = "data/latents"
  c.data.negative_prompt_embeds = "data/negative_prompt"
  c.guidance_scale = 3.0  # teacher CFG on flow: v_u + 3·(v_c − v_u)
  c.optimizer = base.optimizer(lr=2e-6)
  c.ema = ml_collections.ConfigDict(dict(decay=0.99))  # the target, from step 0
  c.quirks.bf16_timesteps = True  # sampled timesteps rounded to bfloat16
  c.denoising_steps = (1000, 750, 500, 250)  # the few-step list the samples use
  c.sample_every = 250  # iterations between TensorBoard sample videos (0: none)
  c.num_sample_videos = 4  # of the first prompts of the data
  return base.select(variant, c, tiny=base.tiny)
