"""ODE pairs for stage 2a, chunkwise: the stage-1 AR teacher sampled with CFG 6 on the 48-step grid,
each block conditioned on the ground-truth history. Writes ArrayRecord shards into --workdir.

  python -m cf_jax.generate_ode_data --config configs/ode_data_chunkwise.py --workdir data/ode_pairs_chunkwise
  python -m cf_jax.generate_ode_data --config configs/ode_data_chunkwise.py:tiny --workdir /tmp/ode_pairs
"""
import ml_collections

from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.frames_per_block = 3
  c.model = "t2v_1_3b"
  c.teacher = "autoregressive"  # or 'bidirectional': the Self Forcing-style teacher, for comparison
  c.init = base.init(generator="runs/ar_diffusion_chunkwise/export/generator")
  c.guidance_scale = 6.0  # the scripts' argparse default (spec §11.1), not the configs' 3.0
  c.seed = 0
  c.batch_size = 8  # videos per teacher call on this host (split over its devices)
  c.items_per_shard = 64
  c.num_examples = 0  # 0: every record of data.path
  c.output_dtype = "float16"  # the reference's LMDB stores fp16
  c.compute_dtype = "float32"  # the reference runs the teacher in fp32
  c.attention_backend = "auto"
  c.remat_policy = "none"
  c.data = base.data("data/latents")
  c.data.negative_prompt_embeds = "data/negative_prompt"
  return base.select(variant, c, tiny=base.tiny)
