"""Stage 2a, framewise: causal ODE regression on the stage-1 AR teacher's ODE pairs.
Reads generate_ode_data's output; writes export/generator (the DMD initialization).

  python -m cf_jax.train --config configs/causal_ode_framewise.py --workdir runs/causal_ode_framewise
  python -m cf_jax.train --config configs/causal_ode_framewise.py:tiny --workdir /tmp/causal_ode_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.causal_ode("framewise")
  return base.select(variant, c, tiny=base.tiny)
