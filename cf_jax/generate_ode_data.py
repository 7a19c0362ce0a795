"""`python -m cf_jax.generate_ode_data`: ODE pairs from the stage-1 AR teacher for stage 2a.

  python -m cf_jax.generate_ode_data --config configs/ode_data_chunkwise.py --workdir data/ode_pairs_chunkwise

For every clean latent video of `data.path` (with its prompt embedding), the teacher is sampled
with CFG on the 48-step grid from fresh noise, every block conditioned on the ground-truth history
(see `cf_jax.training.ode_pairs`). The dataset is written into --workdir; rerun to resume.
"""
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cf_jax import cli
from cf_jax import multihost
from cf_jax.training import ode_pairs

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/ode_data_<layout>.py[:tiny]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output dataset directory.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  multihost.initialize()
  out = ode_pairs.generate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(f"wrote ODE pairs to {out}")


if __name__ == "__main__":
  cli.run(main, config_flag="config")
