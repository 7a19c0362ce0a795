"""Analytic FLOP counts of the Wan DiT (spec: architecture.md §10; FLOPs = 2 × multiply-adds)."""
from cf_jax.models.config import WanConfig

# Dense bf16 peak TFLOP/s per chip, for MFU figures.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v6 lite": 918.0, "TPU v4": 275.0}


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
