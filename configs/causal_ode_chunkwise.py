"""Stage 2a, chunkwise: causal ODE regression on the stage-1 AR teacher's ODE pairs.
Reads generate_ode_data's output; writes export/generator (the DMD initialization).

  python -m cf_jax.train --config configs/causal_ode_chunkwise.py --workdir runs/causal_ode_chunkwise
  python -m cf_jax.train --config configs/causal_ode_chunkwise.py:tiny --workdir /tmp/causal_ode_chunkwise   # tiny model, synthetic data, CPU
"""
from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.base("ode", frames_per_block=3)
  c.init.generator = "runs/ar_diffusion_chunkwise/export/generator"
  c.data.path = "data/ode_pairs_chunkwise"  # generate_ode_data output
  c.denoising_steps = (1000, 750, 500, 250)  # unwarped few-step list; ODE pairs hold its states
  c.optimizer = base.optimizer(lr=2e-6, b1=0.9)  # the one stage with beta1 0.9
  c.sample_every = 250  # iterations between TensorBoard sample videos (0: none)
  c.num_sample_videos = 4  # of the first prompts of the data
  return base.select(variant, c, tiny=base.tiny)
