"""Streaming-sampler speed: compile time, seconds per latent frame, tokens/s, TFLOP/s and MFU.

Random weights of a named model config (the speed does not depend on the values):
  python benchmarks/sample_bench.py --model tiny --height 64 --width 64            # CPU
  python benchmarks/sample_bench.py --model t2v_1_3b --frames_per_block 3 --attention cudnn   # GPU
"""
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from cf_jax import flops
from cf_jax.diffusion import streaming
from cf_jax.models import attention
from cf_jax.models import wan
from cf_jax.models.config import WanConfig

_MODEL = flags.DEFINE_string("model", "tiny", "WanConfig preset.")
_FRAMES = flags.DEFINE_integer("num_frames", 21, "Latent frames.")
_HEIGHT = flags.DEFINE_integer("height", 480, "Pixels.")
_WIDTH = flags.DEFINE_integer("width", 832, "Pixels.")
_FPB = flags.DEFINE_integer("frames_per_block", 3, "Frames per block.")
_STEPS = flags.DEFINE_integer("steps", 4, "Denoising steps (4, 2, 1).")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Videos generated together.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Compute dtype.")
_ATTENTION = flags.DEFINE_enum("attention", "auto", list(attention.BACKENDS), "Attention backend.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed videos after the warm-up one.")


def main(argv):
  del argv
  cfg = WanConfig.from_preset(_MODEL.value)
  dtype = jnp.bfloat16 if _DTYPE.value == "bfloat16" else jnp.float32
  model = wan.WanModel(cfg, dtype=dtype, param_dtype=dtype, attention_backend=_ATTENTION.value)
  latent_hw = (_HEIGHT.value // 8, _WIDTH.value // 8)
  s = cfg.tokens_per_frame(*latent_hw)
  x = jnp.zeros((1, _FPB.value, *latent_hw, cfg.in_dim), dtype)
  context = jnp.zeros((_BATCH.value, cfg.text_len, cfg.text_dim), dtype)
  init = lambda k: nn.unbox(model.init(k, x, jnp.zeros(x.shape[:2]), context[:1])["params"])
  params = jax.jit(init)(jax.random.key(0))
  sampler = streaming.StreamingSampler(
      model, params, streaming.FewStepConfig.from_step_count(_FPB.value, _STEPS.value, capacity_frames=_FRAMES.value)
  )
  noise = jax.random.normal(jax.random.key(1), (_BATCH.value, _FRAMES.value, *latent_hw, cfg.in_dim), dtype)

  def video():
    state = sampler.start(context, latent_hw)
    blocks = [b for b, state in sampler.stream(state, noise, jax.random.key(2))]
    return jax.block_until_ready(jnp.concatenate(blocks, axis=1))

  start = time.perf_counter()
  video()
  first = time.perf_counter() - start
  times = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    video()
    times.append(time.perf_counter() - start)
  seconds = min(times)
  total_flops = _BATCH.value * flops.streaming_video_flops(cfg, s, _FRAMES.value, _FPB.value, _STEPS.value + 1)
  tflops = total_flops / seconds / 1e12
  device = jax.devices()[0]
  peak = flops.peak_tflops(device.device_kind)
  print(f"device: {device.device_kind} ({jax.default_backend()}), model {_MODEL.value}, {_DTYPE.value}, "
        f"attention {_ATTENTION.value}, batch {_BATCH.value}, {_FRAMES.value} latent frames of {s} tokens, "
        f"{_FPB.value} frame(s)/block, {_STEPS.value} steps")
  print(f"compile + first video: {first:.2f} s (compile ≈ {first - seconds:.2f} s)")
  print(f"video: {seconds:.3f} s  |  {seconds / _FRAMES.value * 1e3:.1f} ms per latent frame  |  "
        f"{_BATCH.value * _FRAMES.value * s * (_STEPS.value + 1) / seconds:,.0f} tokens/s (all passes)")
  print(f"analytic {total_flops / 1e12:.3f} TFLOP per run → {tflops:.3f} TFLOP/s"
        + (f", MFU {tflops / peak:.1%} of {peak:.0f}" if peak else ""))


if __name__ == "__main__":
  app.run(main)
