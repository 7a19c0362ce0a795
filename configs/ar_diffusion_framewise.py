"""Stage 1, framewise: AR diffusion with teacher forcing from Wan2.1-T2V-1.3B.
Reads latent videos with prompt embeddings; writes export/generator (the AR teacher).

  python -m cf_jax.train --config configs/ar_diffusion_framewise.py --workdir runs/ar_diffusion_framewise
  python -m cf_jax.train --config configs/ar_diffusion_framewise.py:tiny --workdir /tmp/ar_diffusion_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.ar_diffusion("framewise")
  return base.select(variant, c, tiny=base.tiny)
