"""Stage 1, framewise: configs/ar_diffusion_chunkwise.py with blocks of one latent frame.
Reads latent videos with prompt embeddings; writes export/generator (the AR teacher).

  python -m cf_jax.train --config configs/ar_diffusion_framewise.py --workdir runs/ar_diffusion_framewise
  python -m cf_jax.train --config configs/ar_diffusion_framewise.py:tiny --workdir /tmp/ar_diffusion_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.stage_config("ar_diffusion_chunkwise")
  c.frames_per_block = 1
  return base.select(variant, c, tiny=base.tiny)
