"""ODE pairs for stage 2a, chunkwise: the stage-1 AR teacher sampled with CFG 6 on the 48-step grid,
each block conditioned on the ground-truth history. Writes ArrayRecord shards into --workdir.

  python -m cf_jax.generate_ode_data --config configs/ode_data_chunkwise.py --workdir data/ode_pairs_chunkwise
  python -m cf_jax.generate_ode_data --config configs/ode_data_chunkwise.py:tiny --workdir /tmp/ode_pairs
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.ode_data("chunkwise")
  return base.select(variant, c, tiny=base.tiny)
