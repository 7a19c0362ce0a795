"""Stage 3, frame-wise, 1-step (Causal Forcing++): configs/dmd_framewise.py from the
consistency-distilled generator; the first block keeps the 4-step list, the others use (1000,).

  python -m cf_jax.train --config configs/dmd_framewise_1step.py --workdir runs/dmd_framewise_1step
  python -m cf_jax.train --config configs/dmd_framewise_1step.py:tiny --workdir /tmp/dmd_framewise_1step   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.stage_config("dmd_framewise")
  c.init.generator = "runs/causal_cd_framewise/export/generator_ema"
  c.denoising_steps = (1000,)  # unwarped few-step list of the rollout
  c.dmd.first_block_denoising_steps = (1000, 750, 500, 250)  # the first block keeps the 4-step list (spec §7.6)
  return base.select(variant, c, tiny=base.tiny)
