"""The analytic FLOP counts reproduce the spec's worked numbers (architecture.md §10)."""
import pytest

from cf_jax import flops
from cf_jax.models.config import WanConfig

CFG = WanConfig.t2v_1_3b()
S = 1560


def test_per_token_and_per_pair_constants():
  assert flops.linear_flops_per_token(CFG) == 2_500_853_760
  assert flops.attention_flops_per_pair(CFG) == 184_320


@pytest.mark.parametrize("cached, tflop", [(0, 4.51), (1, 4.96), (5, 6.75), (20, 13.48)])
def test_one_frame_with_cache(cached, tflop):
  # §10.2 counts the text MLP (0.009 TFLOP), which the cached path here does not recompute.
  assert flops.block_call_flops(CFG, S, 1, cached) / 1e12 == pytest.approx(tflop - 0.009, abs=0.01)


def test_framewise_four_step_video():
  # §10.2: ≈ 944 TFLOP per 81-frame video, 5 passes per frame (one sweep 189.0 TFLOP).
  total = flops.streaming_video_flops(CFG, S, 21, 1, 5)
  assert total / 1e12 == pytest.approx(5 * (189.0 - 21 * 0.009), rel=2e-3)
