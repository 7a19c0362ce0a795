"""The CPU perf anchor of issue 14, against which the PyTorch original was timed on the same machine.

Model: Wan DiT dim 512, 8 heads, ffn 1024, 8 layers, freq_dim 256; text [1, 512, 4096]; latents
[1, 6, 20, 26, 16] channels-last (130 tokens per latent frame); fp32 parameters and compute,
matmul precision highest. Two workloads, each in a subprocess of its own so its peak RSS is its own:

* sample: frame-wise 4-step KV-cache sampling of the 6 latent frames (4 denoising calls and one
  cache refresh per block), text cache and per-step noise included;
* train: one frame-wise teacher-forcing forward + flow loss + backward over all parameters
  (`ar_diffusion.loss`), jitted.

  python benchmarks/cpu_anchor.py                      # both, the default attention backend
  python benchmarks/cpu_anchor.py --attention xla      # the dense-mask backend, as a yardstick

The last line reads `cpu_anchor: sample <s> s  train <s> s  rss_train <GB> GB  rss_sample <GB> GB`
(medians; GB = 1e9 bytes).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cf_jax import host_memory
from cf_jax.diffusion import streaming
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from cf_jax.training import ar_diffusion
from cf_jax.training.denoiser import Denoiser

_WORKLOAD = flags.DEFINE_enum("workload", "both", ["both", "sample", "train"], "What to run.")
_ATTENTION = flags.DEFINE_string("attention", None, "Attention backend; unset: the model's default.")
_ITERATIONS = flags.DEFINE_integer("iterations", 5, "Timed iterations after the warm-up one.")

CONFIG = WanConfig(dim=512, ffn_dim=1024, num_heads=8, num_layers=8, freq_dim=256)
LATENTS = (1, 6, 20, 26, 16)  # [B, F, H, W, C]
FRAMES_PER_BLOCK = 1
SAMPLING_STEPS = 4


def _model() -> wan.WanModel:
  kw = {} if _ATTENTION.value is None else {"attention_backend": _ATTENTION.value}
  return wan.WanModel(CONFIG, dtype=jnp.float32, param_dtype=jnp.float32, **kw)


def _inputs(model: wan.WanModel, layout: wan.Layout):
  """Random params (values do not change the speed), text [1, 512, 4096] and latents, drawn on
  the host from the params' shapes: like weights loaded from a checkpoint, they cost no compile
  (a jitted `model.init` would compile the whole network once more and count in the peak RSS)."""
  rng = np.random.default_rng(0)
  normal = lambda shape: jnp.asarray(0.02 * rng.standard_normal(shape, np.float32))
  context, x = normal((1, CONFIG.text_len, CONFIG.text_dim)), normal(LATENTS)
  t = jnp.zeros(LATENTS[:2])
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), x, t, context, layout)["params"]))
  return jax.tree.map(lambda s: normal(s.shape), shapes), context, x / 0.02, jax.random.key(3)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _timed(fn, iterations: int) -> tuple[float, list[float], list[float]]:
  """(wall seconds of the first call, wall and CPU seconds of each later one); fn blocks until
  its result is ready. CPU seconds (all threads) vary less than wall time on a shared machine."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times, cpu = [], []
  for _ in range(iterations):
    start, start_cpu = time.perf_counter(), _cpu_seconds()
    fn()
    times.append(time.perf_counter() - start)
    cpu.append(_cpu_seconds() - start_cpu)
  return first, times, cpu


def _sample(iterations: int) -> dict:
  model = _model()
  params, context, noise, key = _inputs(model, wan.Layout.block_causal(FRAMES_PER_BLOCK))
  config = streaming.FewStepConfig.from_step_count(FRAMES_PER_BLOCK, SAMPLING_STEPS, capacity_frames=LATENTS[1])
  sampler = streaming.StreamingSampler(model, params, config)
  first, times, cpu = _timed(lambda: jax.block_until_ready(sampler.generate(context, noise, key)), iterations)
  return {"compile_s": first - statistics.median(times), "first_s": first, "times": times, "cpu": cpu}


def _train(iterations: int) -> dict:
  layout = wan.Layout.block_causal(FRAMES_PER_BLOCK)
  model = _model()
  params, context, x0, key = _inputs(model, layout)
  generator = Denoiser(model, layout)
  k_noise, k_index = jax.random.split(key)
  noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
  index = jax.random.randint(k_index, x0.shape[:2], 0, 1000)

  def loss(params):
    return ar_diffusion.loss(generator, params, x0, context, noise, index, bf16_timesteps=False)[0]

  start = time.perf_counter()
  step = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  compile_s = time.perf_counter() - start  # wall seconds of lowering + compiling
  first, times, cpu = _timed(lambda: jax.block_until_ready(step(params)), iterations)
  return {"compile_s": compile_s, "first_s": first, "times": times, "cpu": cpu}


def _child(workload: str) -> None:
  jax.config.update("jax_default_matmul_precision", "highest")
  host_memory.trim_after_compiles()  # as every cf_jax command-line tool
  result = {"sample": _sample, "train": _train}[workload](_ITERATIONS.value)
  result["rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
  result["backend"] = _model().attention_backend  # 'auto' is blocksparse on CPU
  print("RESULT " + json.dumps(result))


def _run_child(workload: str) -> dict:
  argv = [sys.executable, __file__, f"--workload={workload}", f"--iterations={_ITERATIONS.value}"]
  if _ATTENTION.value is not None:
    argv.append(f"--attention={_ATTENTION.value}")
  # The CPU backend only: with libtpu installed (the `tpu` extra, for AOT compiles), jax would
  # also load and initialize it, 0.1 GB of RSS that no CPU-only install has.
  env = os.environ | {"JAX_PLATFORMS": "cpu"}
  proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  if proc.returncode or not lines:
    sys.exit(f"cpu_anchor: the {workload} subprocess failed:\n{proc.stderr[-4000:]}")
  result = json.loads(lines[-1][len("RESULT "):])
  t = result["times"]
  print(f"{workload:>6} ({result['backend']}): compile {result['compile_s']:.2f} s  first {result['first_s']:.2f} s  "
        f"per iteration median {statistics.median(t):.3f} s  min {min(t):.3f}  max {max(t):.3f} "
        f"({len(t)} iterations)  CPU s per iteration median {statistics.median(result['cpu']):.3f}  "
        f"peak RSS {result['rss_gb']:.2f} GB")
  return result


def main(argv):
  del argv
  if _WORKLOAD.value != "both":
    _child(_WORKLOAD.value)
    return
  print(f"load: {os.getloadavg()} (uptime), {os.cpu_count()} CPUs, jax {jax.__version__}")
  sample, train = _run_child("sample"), _run_child("train")
  print(f"load: {os.getloadavg()} (uptime)")
  print(f"cpu_anchor: sample {statistics.median(sample['times']):.3f} s  train {statistics.median(train['times']):.3f} s  "
        f"rss_train {train['rss_gb']:.2f} GB  rss_sample {sample['rss_gb']:.2f} GB")


if __name__ == "__main__":
  app.run(main)
