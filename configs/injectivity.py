"""ODE pairs from the AR teacher against ODE pairs from the bidirectional teacher, on the toy
recipe (`cf_jax.experiments.injectivity`): same data, noise, init and settings, several seeds.

  python -m cf_jax.experiments.injectivity --config configs/injectivity.py --workdir runs/injectivity
  python -m cf_jax.experiments.injectivity --config configs/injectivity.py --workdir runs/injectivity \
      --config.toy_workdir=runs/toy   # reuse a toy run's data and teachers
  python -m cf_jax.experiments.injectivity --config configs/injectivity.py:smoke --workdir /tmp/inj   # CI
"""
import pathlib

import ml_collections

from cf_jax.training import config as base


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.toy = ml_collections.ConfigDict()  # data, teachers, every stage: configs/toy.py of the same variant
  c.toy_workdir = ""  # a finished toy run whose data and teachers to reuse; empty: train them here
  c.seeds = (0, 1, 2)  # per seed and arm: ODE pairs, causal ODE, DMD
  c.floor_fraction = 0.2  # the ODE loss floor: mean loss over this last fraction of the steps
  # The AR teacher is trained on, round_steps at a time and at most max_rounds times, until it is
  # at least as close to the real videos as the bidirectional teacher (frame_fd and motion_fd).
  c.ar_teacher = ml_collections.ConfigDict(dict(round_steps=300, max_rounds=4))
  # Teacher maps: noise videos z (each with a held-out video as history and its prompt), and
  # redraws of the noise after each block per z (as many independent noises).
  c.num_noises = 4
  c.resamples = 8
  c.noise_seed = 0
  c = base.select(variant, c, smoke=smoke)
  c.toy = base.from_file(pathlib.Path(__file__).with_name("toy.py"), variant)
  return c


def smoke(c):  # one seed: every stage compiles once per run, which is most of the time
  c.update(seeds=(0,), num_noises=1, resamples=2)
  c.ar_teacher.update(round_steps=2, max_rounds=1)
  return c
