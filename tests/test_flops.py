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


def test_peak_of_a_device_kind_takes_the_longest_match():
  assert flops.peak_tflops("TPU v5") == 459.0  # what a v5p chip reports
  assert flops.peak_tflops("TPU v5 lite") == 197.0
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("cpu") is None


def test_mask_pairs_count_the_dense_masks():
  from cf_jax.models.attention import BlockMask

  for kind, pairs in (("block_causal", flops.block_causal_pairs), ("teacher_forcing", flops.teacher_forcing_pairs)):
    mask = BlockMask(kind, num_frames=6, tokens_per_frame=5, frames_per_block=2)
    assert pairs(3, 10) == mask.dense().sum()


def test_stage1_update_is_three_teacher_forcing_forwards():
  from cf_jax.training import config as config_lib

  config = config_lib.stage_config("ar_diffusion_chunkwise")
  config.batch_size = 2
  per_video = flops.forward_flops(CFG, 2 * 21 * S, flops.teacher_forcing_pairs(7, 3 * S))
  assert flops.training_update_flops(config, {"generator": CFG}, S) == {"generator": 2 * 3 * per_video}
  # §10.3: the 21-frame teacher-forcing forward of the 1.3B is ≈ 396 TFLOP chunk-wise, 377 frame-wise.
  assert per_video / 1e12 == pytest.approx(396, rel=2e-3)
  framewise = flops.forward_flops(CFG, 2 * 21 * S, flops.teacher_forcing_pairs(21, S))
  assert framewise / 1e12 == pytest.approx(377, rel=2e-3)
