"""Stage 3, framewise, 4 steps: asymmetric DMD with the self-forcing rollout, initialized by
causal ODE regression. Reads prompt embeddings; writes export/generator_ema for the sampler.

  python -m cf_jax.train --config configs/dmd_framewise.py --workdir runs/dmd_framewise
  python -m cf_jax.train --config configs/dmd_framewise.py:tiny --workdir /tmp/dmd_framewise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.dmd("framewise", init="runs/causal_ode_framewise/export/generator")
  return base.select(variant, c, tiny=base.tiny)
