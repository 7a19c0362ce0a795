"""Stage 3, chunkwise, 4 steps: asymmetric DMD with the self-forcing rollout, initialized by
causal ODE regression. Reads prompt embeddings; writes export/generator_ema for the sampler.

  python -m cf_jax.train --config configs/dmd_chunkwise.py --workdir runs/dmd_chunkwise
  python -m cf_jax.train --config configs/dmd_chunkwise.py:tiny --workdir /tmp/dmd_chunkwise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.dmd("chunkwise", init="runs/causal_ode_chunkwise/export/generator")
  return base.select(variant, c, tiny=base.tiny)
