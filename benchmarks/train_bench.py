"""Training-step speed and memory of a stage: compile time, seconds per update, achieved TFLOP/s
and MFU from the analytic model FLOPs of `cf_jax.flops` (XLA's cost analysis counts a scanned
layer body once, 30-40x low at full size; it is printed beside for reference), peak memory.

Random weights (every `init.*` is cleared unless --keep_init), the config's data source:
  python benchmarks/train_bench.py --config configs/dmd_chunkwise.py:tiny                         # CPU
  python benchmarks/train_bench.py --config configs/ar_diffusion_chunkwise.py \\
      --config.data.kind=synthetic --config.batch_size=8 --config.attention_backend=cudnn      # GPU
"""
import resource
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cf_jax import flops
from cf_jax.training.trainer import Trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Stage config (configs/<stage>.py[:tiny]).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls of each update after the warm-up one.")
_KEEP_INIT = flags.DEFINE_bool("keep_init", False, "Load the config's init checkpoints instead of random weights.")


def peak_memory_gb() -> float:
  stats = jax.local_devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**30
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: the process's peak RSS


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if not _KEEP_INIT.value:
    for name in config.init:
      if not name.endswith("_entry"):
        config.init[name] = ""
  config.tensorboard = False
  device = jax.devices()[0].device_kind
  print(f"{config.trainer} ({config.model}, batch {config.batch_size}, {jax.device_count()} × {device})")
  with tempfile.TemporaryDirectory() as workdir:
    trainer = Trainer(config, workdir)
    models = {n: net.model.config for n, net in trainer.stage.networks.items()}
    tokens = models["generator"].tokens_per_frame(config.data.latent_height, config.data.latent_width)
    analytic = flops.training_update_flops(config, models, tokens)
    with trainer.mesh_context():
      for update in trainer.stage.updates:
        batch = trainer.next_batch()
        start = time.perf_counter()
        compiled = trainer.updates[update.name].lower(trainer.state, trainer.frozen, batch).compile()
        compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        xla_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
        trainer.state, _ = compiled(trainer.state, trainer.frozen, batch)
        jax.block_until_ready(trainer.state)
        start = time.perf_counter()
        for _ in range(_STEPS.value):
          trainer.state, _ = compiled(trainer.state, trainer.frozen, batch)
        jax.block_until_ready(trainer.state)
        seconds = (time.perf_counter() - start) / _STEPS.value
        step_flops = analytic[update.name]
        tflops = step_flops / seconds / 1e12
        line = (f"{update.name:>10}: compile {compile_s:6.1f} s  step {seconds * 1e3:8.1f} ms  "
                f"{step_flops / 1e12:8.3f} TFLOP/step (XLA, scan bodies once: {xla_flops / 1e12:.3f})  "
                f"{tflops:7.3f} TFLOP/s")
        peak = flops.peak_tflops(device)
        if peak:
          line += f"  MFU {100 * tflops / (peak * jax.device_count()):.1f}%"
        print(line)
  print(f"peak memory {peak_memory_gb():.2f} GiB")


if __name__ == "__main__":
  app.run(main)
