"""Compiled memory of the KV-cached programs: the streaming sampler's per-block step and the DMD
self-forcing rollout, from XLA's `memory_analysis()` (compiled only, nothing is allocated, so a
real-size model compiles on a CPU host):

  python benchmarks/cache_memory.py --model t2v_1_3b --num_frames 21 --frames_per_block 3

Prints compile seconds, arguments, outputs, aliased (donated) and temporary bytes, next to the size
of one KV cache, so "temporaries / cache" says how many cache-sized buffers a program keeps live.
"""
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from cf_jax.diffusion import streaming
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from cf_jax.models.kv_cache import KVCache
from cf_jax.training import rollout as rollout_lib
from cf_jax.training.denoiser import Denoiser

_MODEL = flags.DEFINE_string("model", "t2v_1_3b", "WanConfig preset.")
_FRAMES = flags.DEFINE_integer("num_frames", 21, "Latent frames (the cache capacity).")
_HEIGHT = flags.DEFINE_integer("height", 480, "Pixels.")
_WIDTH = flags.DEFINE_integer("width", 832, "Pixels.")
_FPB = flags.DEFINE_integer("frames_per_block", 3, "Frames per block.")
_BATCH = flags.DEFINE_integer("batch_size", 1, "Videos.")
_PROGRAMS = flags.DEFINE_list("programs", ["sampler", "rollout"], "Which programs to compile.")

STEPS = (1000.0, 937.5, 833.3333, 625.0)


def report(name: str, lowered, cache_bytes: int):
  start = time.perf_counter()
  m = lowered.compile().memory_analysis()
  seconds = time.perf_counter() - start
  gb = lambda n: f"{n / 2**30:7.2f} GB"
  print(f"{name:8s} compile {seconds:6.1f} s  arguments {gb(m.argument_size_in_bytes)}  outputs {gb(m.output_size_in_bytes)}  "
        f"aliased {gb(m.alias_size_in_bytes)}  temporaries {gb(m.temp_size_in_bytes)}  "
        f"= {m.temp_size_in_bytes / cache_bytes:.2f} caches")


def main(argv):
  del argv
  cfg = WanConfig.from_preset(_MODEL.value)
  model = wan.WanModel(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  latent_hw = (_HEIGHT.value // 8, _WIDTH.value // 8)
  b, f, k = _BATCH.value, _FRAMES.value, _FPB.value
  spec = lambda shape, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dtype)
  x = spec((b, k, *latent_hw, cfg.in_dim))
  context = spec((b, cfg.text_len, cfg.text_dim))
  init = lambda x, c: nn.unbox(model.init(jax.random.key(0), x, jnp.zeros(x.shape[:2]), c)["params"])
  params = jax.eval_shape(init, x, context)
  text = jax.eval_shape(lambda p, c: wan.WanTextCache(cfg, model.dtype, model.param_dtype).apply({"params": p}, c),
                        params, context)
  cache = jax.eval_shape(lambda t: KVCache.create(t, f, cfg.tokens_per_frame(*latent_hw), dtype=model.dtype), text)
  cache_bytes = cache.k.size * cache.k.dtype.itemsize * 2
  print(f"{_MODEL.value}, batch {b}, {f} latent frames {latent_hw}, {k} frame(s)/block; "
        f"KV cache k+v {cache_bytes / 2**30:.2f} GB (shape {cache.k.shape})")
  if "sampler" in _PROGRAMS.value:
    sampler = streaming.StreamingSampler(model, params, streaming.FewStepConfig(k, STEPS, capacity_frames=f))
    step_noise = spec((len(STEPS) - 1, *x.shape))
    block = sampler._block_fn(STEPS).lower(params, cache, x, step_noise, spec((), jnp.int32))
    report("sampler", block, cache_bytes)
  if "rollout" in _PROGRAMS.value:
    generator = Denoiser(model, wan.Layout.block_causal(k))
    exits = (spec((), jnp.int32), spec((), jnp.int32))
    roll = jax.jit(rollout_lib.self_forcing_rollout, static_argnums=(0, 4, 5)).lower(
        generator, params, context, spec((b, f, *latent_hw, cfg.in_dim)), STEPS, None, exits,
        jax.eval_shape(lambda: jax.random.key(0)))
    report("rollout", roll, cache_bytes)


if __name__ == "__main__":
  app.run(main)
