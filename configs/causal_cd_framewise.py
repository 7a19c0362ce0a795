"""Stage 2b, framewise: configs/causal_cd_chunkwise.py with blocks of one latent frame, against the
frame-wise AR teacher. Writes export/generator_ema (the 1-/2-step DMD initialization).

  python -m cf_jax.train --config configs/causal_cd_framewise.py --workdir runs/causal_cd_framewise
  python -m cf_jax.train --config configs/causal_cd_framewise.py:tiny --workdir /tmp/causal_cd_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.stage_config("causal_cd_chunkwise")
  c.frames_per_block = 1
  c.init.generator = c.init.teacher = "runs/ar_diffusion_framewise/export/generator"
  return base.select(variant, c, tiny=base.tiny)
