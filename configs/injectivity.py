"""ODE pairs from the AR teacher against ODE pairs from the bidirectional teacher, on the toy
recipe (`cf_jax.experiments.injectivity`): same data, noise, init and settings, several seeds.

  python -m cf_jax.experiments.injectivity --config configs/injectivity.py --workdir runs/injectivity
  python -m cf_jax.experiments.injectivity --config configs/injectivity.py --workdir runs/injectivity \
      --config.toy_workdir=runs/toy   # reuse a toy run's data and teachers
  python -m cf_jax.experiments.injectivity --config configs/injectivity.py:smoke --workdir /tmp/inj \
      --config.toy_workdir=/tmp/toy_smoke   # CI: a configs/toy.py:smoke run's data and teachers
"""
import ml_collections

from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.toy = ml_collections.ConfigDict()  # data, teachers, every stage: configs/toy.py of the same variant
  c.toy_workdir = ""  # a finished toy run whose data and teachers to reuse; empty: train them here
  c.seeds = (0, 1, 2)  # per seed and arm: ODE pairs, causal ODE, DMD
  c.floor_fraction = 0.2  # the ODE loss floor: mean loss over this last fraction of the steps
  # Both teachers start from the toy's bidirectional `teacher`: the AR one gets the toy's
  # ar_diffusion (teacher-forcing) steps, the bidirectional one as many more of its own training
  # (bidirectional_steps), so their budgets are equal. If the AR teacher is then not at least as
  # close to the real videos (frame_fd and motion_fd), it is trained on, round_steps at a time and at
  # most max_rounds times. "As close" allows `tolerance` (relative): one teacher's distances move by
  # more than that between noise draws and between checkpoints 300 steps apart (motion_fd 292 -> 496).
  c.ar_teacher = ml_collections.ConfigDict(
      dict(bidirectional_steps=300, round_steps=300, max_rounds=2, tolerance=0.05))
  # Teacher maps: noise videos z (each with a held-out video as history and its prompt), and
  # redraws of the noise after each block per z (as many independent noises).
  c.num_noises = 4
  c.resamples = 8
  c.noise_seed = 0
  c.toy = base.stage_config("toy")
  # Teachers are scored with the sampler of their ODE pairs (Euler on the 48-step ODE grid): the
  # toy's 24 steps leave both far from their ODE maps (the AR teacher's motion_fd 902 vs 456 at 48).
  c.toy.sampling_steps = 48
  return base.select(variant, c, smoke=smoke)


def smoke(c):  # one seed: every stage compiles once per run, which is most of the time
  c.toy = base.stage_config("toy", "smoke")
  c.update(seeds=(0,), num_noises=1, resamples=2)
  c.ar_teacher.update(bidirectional_steps=2, round_steps=2, max_rounds=1)
  c.toy.sampling_steps = 4
  return c
