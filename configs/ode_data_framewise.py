"""ODE pairs for stage 2a, framewise: configs/ode_data_chunkwise.py with the frame-wise AR teacher.

  python -m cf_jax.generate_ode_data --config configs/ode_data_framewise.py --workdir data/ode_pairs_framewise
  python -m cf_jax.generate_ode_data --config configs/ode_data_framewise.py:tiny --workdir /tmp/ode_pairs
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.stage_config("ode_data_chunkwise")
  c.frames_per_block = 1
  c.init.generator = "runs/ar_diffusion_framewise/export/generator"
  return base.select(variant, c, tiny=base.tiny)
