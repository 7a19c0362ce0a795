"""Analytic FLOP counts of the Wan DiT (spec: architecture.md §10; FLOPs = 2 × multiply-adds)."""
from cf_jax.models.config import WanConfig

# Dense bf16 peak TFLOP/s per chip by jax device kind, for MFU figures (a v5p chip reports "TPU v5").
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "TPU v5": 459.0, "TPU v5 lite": 197.0, "TPU v6 lite": 918.0, "TPU v4": 275.0}


def peak_tflops(device_kind: str) -> float | None:
  """The bf16 peak of a device kind ('NVIDIA H100 80GB HBM3', 'TPU v5 lite'): the longest key it
  contains, so 'TPU v5 lite' is not taken for 'TPU v5'. None when unknown."""
  keys = sorted((k for k in PEAK_TFLOPS if k in device_kind), key=len)
  return PEAK_TFLOPS[keys[-1]] if keys else None


def linear_flops_per_token(cfg: WanConfig) -> int:
  """Self q,k,v,o + cross q,o + FFN, all layers (2.50 GFLOP for the 1.3B)."""
  d = cfg.dim
  return 2 * cfg.num_layers * (6 * d * d + 2 * d * cfg.ffn_dim)


def attention_flops_per_pair(cfg: WanConfig) -> int:
  """QKᵀ and AV for one (query, key) pair over all heads and layers (184,320 for the 1.3B)."""
  return 4 * cfg.dim * cfg.num_layers


def block_call_flops(cfg: WanConfig, tokens_per_frame: int, block_frames: int, cached_frames: int) -> int:
  """One KV-cache forward of `block_frames` frames attending to `cached_frames` earlier ones.

  Cross-attention K/V are cached per prompt and not counted; patch embedding, head and time MLPs
  are negligible (< 0.1%).
  """
  queries = block_frames * tokens_per_frame
  keys = (cached_frames + block_frames) * tokens_per_frame
  return (
      queries * linear_flops_per_token(cfg)
      + queries * keys * attention_flops_per_pair(cfg)
      + queries * cfg.text_len * attention_flops_per_pair(cfg)
  )


def streaming_video_flops(cfg: WanConfig, tokens_per_frame: int, num_frames: int, frames_per_block: int,
                          calls_per_block: int, capacity_frames: int | None = None) -> int:
  """All generator calls of a streamed video (denoising steps + the cache refresh per block)."""
  capacity = capacity_frames or num_frames
  total = 0
  for start in range(0, num_frames, frames_per_block):
    cached = min(start, capacity - frames_per_block)
    total += calls_per_block * block_call_flops(cfg, tokens_per_frame, frames_per_block, cached)
  return total


def forward_flops(cfg: WanConfig, queries: int, pairs: int) -> int:
  """One forward of `queries` tokens over `pairs` visible (query, key) pairs of self-attention,
  with cross-attention to the text."""
  per_pair = attention_flops_per_pair(cfg)
  return queries * linear_flops_per_token(cfg) + pairs * per_pair + queries * cfg.text_len * per_pair


def block_causal_pairs(num_blocks: int, block_tokens: int) -> int:
  """Visible pairs of the block-causal mask: block j sees blocks 0..j."""
  return block_tokens**2 * num_blocks * (num_blocks + 1) // 2


def teacher_forcing_pairs(num_blocks: int, block_tokens: int) -> int:
  """Visible pairs of the [clean; noisy] mask: the clean half is block-causal, noisy block j sees
  clean blocks < j and itself (as many pairs again)."""
  return 2 * block_causal_pairs(num_blocks, block_tokens)


def training_update_flops(config, models: dict[str, WanConfig], tokens_per_frame: int) -> dict[str, float]:
  """Model FLOPs of one optimizer update of each of a stage's updates, for the global batch.

  A trained forward counts 3× (forward, and the backward's two products), a frozen or
  gradient-free one 1×; remat's recomputation is not counted (it is not model work). The DMD
  rollout's exit index is random: its count is the expectation, (S - 1)/2 steps before the exit.
  `config` is a training config, `models` the WanConfig of each network of its stage.
  """
  f, k, s = config.data.num_frames, config.frames_per_block, tokens_per_frame
  n, blocks = f * s, f // k
  gen = models["generator"]
  tf = lambda cfg: forward_flops(cfg, 2 * n, teacher_forcing_pairs(blocks, k * s))
  bidirectional = lambda cfg: forward_flops(cfg, n, n * n)
  if config.trainer == "ar_diffusion":
    per_video = {"generator": 3 * (tf(gen) if config.causal else bidirectional(gen))}
  elif config.trainer == "ode":
    per_video = {"generator": 3 * tf(gen)}
  elif config.trainer == "consistency":  # teacher cond + uncond, student (trained), EMA target
    per_video = {"generator": (2 + 3 + 1) * tf(gen)}
  elif config.trainer == "dmd":
    steps = len(config.denoising_steps)
    first = config.dmd.first_block_denoising_steps
    rollout = 0.0
    for block, start in enumerate(range(0, f, k)):
      num_steps = len(first) if block == 0 and first else steps
      calls = (num_steps - 1) / 2 + 1 + 1  # steps before the exit, the exit, the cache refresh
      rollout += calls * block_call_flops(gen, s, k, start)
    critic, real = models["critic"], models["real_score"]
    per_video = {
        "generator": rollout + 3 * tf(gen) + bidirectional(critic) + 2 * bidirectional(real),
        "critic": rollout + 3 * bidirectional(critic),
    }
  else:
    raise ValueError(f"no FLOP count for trainer {config.trainer!r}")
  return {name: config.batch_size * v for name, v in per_video.items()}
