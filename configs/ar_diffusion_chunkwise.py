"""Stage 1, chunkwise: AR diffusion with teacher forcing from Wan2.1-T2V-1.3B.
Reads latent videos with prompt embeddings; writes export/generator (the AR teacher).

  python -m cf_jax.train --config configs/ar_diffusion_chunkwise.py --workdir runs/ar_diffusion_chunkwise
  python -m cf_jax.train --config configs/ar_diffusion_chunkwise.py:tiny --workdir /tmp/ar_diffusion_chunkwise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.base("ar_diffusion", frames_per_block=3)
  c.init.generator = "wan_models/Wan2.1-T2V-1.3B"  # the bidirectional base model
  c.data.path = "data/latents"  # encode_videos output, with prompt embeddings
  c.causal = True  # False trains a bidirectional model (no teacher forcing): the toy's teacher
  c.noise_augmentation_max_timestep = 0  # context noise augmentation of the clean history (0: off)
  c.optimizer = base.optimizer(lr=2e-6)
  c.quirks.bf16_timesteps = True  # sampled timesteps rounded to bfloat16
  return base.select(variant, c, tiny=base.tiny)
