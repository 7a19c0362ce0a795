"""Stage 2b, chunkwise: causal consistency distillation (Causal Forcing++) against the
stage-1 AR teacher. Reads latent videos with prompt embeddings; writes export/generator_ema.

  python -m cf_jax.train --config configs/causal_cd_chunkwise.py --workdir runs/causal_cd_chunkwise
  python -m cf_jax.train --config configs/causal_cd_chunkwise.py:tiny --workdir /tmp/causal_cd_chunkwise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.causal_cd("chunkwise")
  return base.select(variant, c, tiny=base.tiny)
