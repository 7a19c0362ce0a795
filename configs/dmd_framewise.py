"""Stage 3, framewise, 4 steps: configs/dmd_chunkwise.py with blocks of one latent frame, initialized
by the frame-wise causal ODE regression. Writes export/generator_ema for the sampler.

  python -m cf_jax.train --config configs/dmd_framewise.py --workdir runs/dmd_framewise
  python -m cf_jax.train --config configs/dmd_framewise.py:tiny --workdir /tmp/dmd_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.stage_config("dmd_chunkwise")
  c.frames_per_block = 1
  c.init.generator = "runs/causal_ode_framewise/export/generator"
  return base.select(variant, c, tiny=base.tiny)
