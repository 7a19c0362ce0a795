"""Stage 3, frame-wise, 1-step (Causal Forcing++): DMD from the consistency-distilled
generator; the first block keeps the 4-step list, the others use (1000,).

  python -m cf_jax.train --config configs/dmd_framewise_1step.py --workdir runs/dmd_framewise_1step
  python -m cf_jax.train --config configs/dmd_framewise_1step.py:tiny --workdir /tmp/dmd_framewise_1step   # tiny model, synthetic data, CPU
"""
import ml_collections

from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = base.base("dmd", frames_per_block=1)
  c.init = base.init(generator="runs/causal_cd_framewise/export/generator_ema",
                     critic="wan_models/Wan2.1-T2V-1.3B",  # the fake score
                     real_score="wan_models/Wan2.1-T2V-14B")  # frozen
  c.data.path = "data/prompt_embeds"  # encode_prompts output
  c.data.negative_prompt_embeds = "data/negative_prompt"
  c.num_steps = 1000  # the reference README: ≤1K iterations at batch 64
  c.denoising_steps = (1000,)  # unwarped few-step list of the rollout
  c.guidance_scale = 3.0  # real score CFG on x0: x0_c + 3·(x0_c − x0_u)
  c.optimizer = base.optimizer(lr=2e-6)
  c.critic_optimizer = base.optimizer(lr=4e-7)
  c.ema = ml_collections.ConfigDict(dict(decay=0.99, start_step=200))
  c.dmd = ml_collections.ConfigDict(dict(
      real_model="t2v_14b",
      critic_model="t2v_1_3b",
      dfake_gen_update_ratio=5,  # critic updates per generator update
      first_block_denoising_steps=(1000, 750, 500, 250),  # the first block keeps the 4-step list (spec §7.6)
      context_noise=0.0,  # timestep of the rollout's cache-refresh pass
      timestep_shift=5.0,  # DMD/critic timestep: 1000·S(u/1000), clamped to [min_step, max_step]
      min_step=20,
      max_step=980,
  ))
  c.quirks.snap_context_noise = True  # the cache refresh at t = 0 uses σ = 0.00498, not 0
  c.checkpoint_every = 250
  c.sample_every = 250  # iterations between TensorBoard sample videos (0: none)
  c.num_sample_videos = 4  # of the first prompts of the data
  return base.select(variant, c, tiny=base.tiny)
