"""The sampling setup checkpoints record: the released presets give the sampler the released
warped schedules, it survives the JSON of a checkpoint, and nonsense is refused."""
import json

import numpy as np
import pytest

from cf_jax.diffusion import sampling_setup
from cf_jax.diffusion.sampling_setup import SamplingSetup

# (frames per block, warped steps, warped first-block steps) of the reference configs, shift 5:
# t = 1000·5s / (1 + 4s) for s = d/1000.
WARPED_4 = (1000.0, 937.5, 833.333, 625.0)
RELEASED = {
    "chunkwise": (3, WARPED_4, None),
    "framewise": (1, WARPED_4, None),
    "cfpp_2step": (1, (1000.0, 833.333), WARPED_4),
    "cfpp_1step": (1, (1000.0,), WARPED_4),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_presets_give_the_released_schedules(name):
  frames_per_block, steps, first = RELEASED[name]
  config = sampling_setup.RELEASED[name].setup.few_step_config(capacity_frames=21)
  assert config.frames_per_block == frames_per_block and config.capacity_frames == 21
  np.testing.assert_allclose(config.steps, steps, atol=1e-3)
  if first is None:
    assert config.first_block_steps is None
  else:
    np.testing.assert_allclose(config.first_block_steps, first, atol=1e-3)


def test_info_round_trips_through_json():
  for released in sampling_setup.RELEASED.values():
    info = json.loads(json.dumps(released.setup.to_info()))
    assert SamplingSetup.from_info(info) == released.setup


def test_bad_setups_are_refused():
  with pytest.raises(ValueError, match="decreasing"):
    SamplingSetup(1, (500, 1000))
  with pytest.raises(ValueError, match=r"within \(0, 1000\]"):
    SamplingSetup(1, (1000, 0))
  with pytest.raises(ValueError, match="frames_per_block"):
    SamplingSetup(0, (1000,))
  with pytest.raises(ValueError, match="unknown sampling keys"):
    SamplingSetup.from_info({"frames_per_block": 1, "denoising_steps": [1000], "cfg": 3})
  with pytest.raises(ValueError, match="bidirectional"):
    SamplingSetup(3, (1000,), causal=False).few_step_config()
