"""Stage 2a, framewise: configs/causal_ode_chunkwise.py with blocks of one latent frame, on the
frame-wise AR teacher's ODE pairs. Writes export/generator (the DMD initialization).

  python -m cf_jax.train --config configs/causal_ode_framewise.py --workdir runs/causal_ode_framewise
  python -m cf_jax.train --config configs/causal_ode_framewise.py:tiny --workdir /tmp/causal_ode_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.stage_config("causal_ode_chunkwise")
  c.frames_per_block = 1
  c.init.generator = "runs/ar_diffusion_framewise/export/generator"
  c.data.path = "data/ode_pairs_framewise"  # generate_ode_data output
  return base.select(variant, c, tiny=base.tiny)
