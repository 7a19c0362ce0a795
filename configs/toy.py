"""The whole recipe at toy scale on a CPU, no downloads: bouncing-shapes videos, a bidirectional
teacher and the stage-1 AR teacher trained from scratch, ODE pairs, causal ODE regression, DMD,
samples with their distances to real videos, and a GIF (about 6 minutes on 2 cores).

  python -m cf_jax.train --config configs/toy.py --workdir runs/toy
  python -m cf_jax.train --config configs/toy.py:smoke --workdir /tmp/toy   # a minute: CI's version
"""
import ml_collections

from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.trainer = "toy_recipe"
  c.seed = 0
  c.model = "toy"  # cf_jax.models.config.WanConfig.toy: 2 layers, width 64
  # Videos: 6 frames of 12×12 with 4 channels, made directly in the model's input space (no VAE).
  c.num_frames, c.height, c.width, c.channels = 6, 12, 12, 4
  c.frames_per_block = 2
  c.text_len, c.text_dim = 4, 16  # class embeddings stand in for prompts
  c.negative_prompt = "zeros"  # the zero embedding
  # The toy never drops the prompt in training, so guidance is off (weight 1: the conditional
  # prediction); the reference's weights (6 for ODE pairs, 1 + 3 in DMD) assume a real
  # unconditional model.
  c.guidance_scale = 1.0
  c.num_train_videos = 1024
  c.num_eval_videos = 64
  c.batch_size = 16
  c.lr = 1e-3
  c.steps = ml_collections.ConfigDict(dict(teacher=400, ar_diffusion=300, causal_ode=200, dmd=60))
  c.dfake_gen_update_ratio = 5
  c.ode_pairs = 256
  c.sampling_steps = 24  # Euler steps of the two multi-step teachers
  return base.select(variant, c, smoke=smoke)


def smoke(c):
  c.steps = ml_collections.ConfigDict(dict(teacher=4, ar_diffusion=4, causal_ode=4, dmd=2))
  c.update(num_train_videos=64, num_eval_videos=16, ode_pairs=16, sampling_steps=4, dfake_gen_update_ratio=1)
  return c
