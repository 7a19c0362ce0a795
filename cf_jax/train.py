"""`python -m cf_jax.train`: runs one training stage on every device of every host.

  python -m cf_jax.train --config configs/ar_diffusion_chunkwise.py --workdir runs/ar_diffusion_chunkwise
  python -m cf_jax.train --config configs/dmd_chunkwise.py:tiny --workdir /tmp/dmd --config.num_steps=4

`--config.key=value` overrides any config key; the config is locked, so an unknown key is an
error. Restarting on the same workdir resumes from its latest checkpoint. On several hosts pass
`--multihost` (Cloud TPU needs nothing else; GPU clusters also give the coordinator address,
process count and index).

SIGTERM/SIGINT: checkpoint the current step, exit 0 (rerun to resume). A non-finite update, a
workdir another run holds, or a config that differs from the workdir's: one line, exit 1.
"""
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cf_jax import cli
from cf_jax import multihost
from cf_jax.errors import UserError
from cf_jax.recipes import toy
from cf_jax.training.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config file (configs/<stage>.py[:tiny]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local or gs://): checkpoints, exports, metrics "
                               "(default for the toy recipe: runs/toy).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  multihost.initialize()
  if jax.process_index() != 0:  # one host's log is the run's log
    logging.set_verbosity(logging.ERROR)
  config = _CONFIG.value
  if config.trainer == "toy_recipe":
    toy.run(config, _WORKDIR.value or "runs/toy")
    return
  if not _WORKDIR.value:
    raise UserError("--workdir is required, e.g. --workdir runs/ar_diffusion_chunkwise")
  trainer = Trainer(config, _WORKDIR.value)
  metrics = trainer.run()
  if jax.process_index() == 0:
    print(" ".join(f"{k}={v:.5g}" for k, v in sorted(metrics.items())))
    print(f"exported to {trainer.workdir / 'export'}")


if __name__ == "__main__":
  cli.run(main, config_flag="config")
