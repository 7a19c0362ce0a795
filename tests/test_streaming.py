"""The KV-cache streaming sampler against the reference's `kv_inference` fixture, and against the
full block-causal forward."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax.convert import wan as convert_wan
from cf_jax.diffusion import streaming
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from tests.conftest import FIXTURES, load_fixture

CFG = WanConfig.tiny()
S = 16  # tokens per 8×8 latent frame
ATOL = 1e-4  # chained 4-step sampling (fixture README)


@functools.cache
def params():
  return convert_wan.load_params(FIXTURES / "wan_tiny.safetensors", CFG)


def channels_last(a):  # [..., C, H, W] -> [..., H, W, C]
  return np.moveaxis(a, -3, -1)


def fixture_case(k):
  d = load_fixture("kv_inference")
  return {name[len(f"infer_nfpb{k}_"):]: v for name, v in d.items() if name.startswith(f"infer_nfpb{k}_")}


def replay(k, capacity_frames=6):
  """Runs the sampler with the fixture's initial and between-step noise."""
  d = fixture_case(k)
  config = streaming.FewStepConfig.from_step_count(k, 4, capacity_frames=capacity_frames)
  sampler = streaming.StreamingSampler(wan.WanModel(CFG), params(), config)
  blocks = 6 // k
  step_noise = channels_last(d["rng_noise"]).reshape(blocks, 3, 1, k, 8, 8, 16)  # 3 draws per block, batch 1
  state = sampler.start(d["prompt_embeds"], (8, 8))
  outputs, traces = [], []
  for b in range(blocks):
    x0, state, trace = sampler.generate_block(state, b, channels_last(d["initial_noise"])[:, b * k : (b + 1) * k], step_noise[b])
    outputs.append(x0)
    traces.append(trace)
  return d, sampler, jnp.concatenate(outputs, axis=1), traces


@pytest.mark.parametrize("k", [1, 3])
def test_every_generator_call_matches_reference(k):
  d, sampler, output, traces = replay(k)
  np.testing.assert_allclose(sampler.config.steps, d["denoising_step_list"], rtol=1e-6)
  denoise_calls = ~d["call_is_cache_refresh"]
  want = {name: channels_last(d[f"call_{name}"][denoise_calls]) for name in ("input", "flow_pred", "x0_pred")}
  got = {
      "input": np.concatenate([t.inputs for t in traces]),
      "flow_pred": np.concatenate([t.flows for t in traces]),
      "x0_pred": np.concatenate([t.x0s for t in traces]),
  }
  for name in want:
    assert np.abs(got[name] - want[name]).max() < ATOL, name
  assert np.abs(np.asarray(output) - channels_last(d["output_latents"])).max() < ATOL
  assert sampler._block_fn(sampler.config.steps)._cache_size() == 1  # no recompiles as the video grows


def test_stream_and_generate_agree_with_block_api():
  d, sampler, output, _ = replay(3)
  step_noise = list(channels_last(d["rng_noise"]).reshape(2, 3, 1, 3, 8, 8, 16))
  video = sampler.generate(d["prompt_embeds"], channels_last(d["initial_noise"]), step_noise=step_noise)
  np.testing.assert_array_equal(np.asarray(video), np.asarray(output))


@pytest.mark.parametrize("k, window", [(1, -1), (3, -1), (1, 3), (3, 3)])
def test_cached_last_block_equals_full_block_causal_forward(k, window):
  """Block b of the sampler attends to the refreshed (t = 0) clean outputs of earlier blocks.
  The full block-causal forward over [x̂0 of blocks < b ; last input of block b] with t = 0 on the
  history must give the same flow — and with a rolling window of W frames, the same as the
  training mask's local window of W frames."""
  d = fixture_case(k)
  capacity = 6 if window == -1 else window
  config = streaming.FewStepConfig.from_step_count(k, 4, capacity_frames=capacity)
  sampler = streaming.StreamingSampler(wan.WanModel(CFG), params(), config)
  noise = channels_last(d["initial_noise"])
  video = np.asarray(sampler.generate(d["prompt_embeds"], noise, key=jax.random.key(0)))
  # Re-run the last block's last denoising call by hand.
  state = sampler.start(d["prompt_embeds"], (8, 8))
  for x0, state in sampler.stream(state, noise[:, : 6 - k], jax.random.key(0)):
    pass
  np.testing.assert_array_equal(np.asarray(x0), video[:, 6 - 2 * k : 6 - k])
  last_input = jax.random.normal(jax.random.key(7), (1, k, 8, 8, 16))
  t_last = sampler.config.steps[-1]
  cached_flow, _ = sampler._call(params(), state.cache, last_input, t_last, state.next_frame)

  frames = np.concatenate([video[:, : 6 - k], np.asarray(last_input)], axis=1)
  t = np.concatenate([np.zeros((1, 6 - k)), np.full((1, k), t_last)], axis=1).astype(np.float32)
  full = wan.WanModel(CFG).apply(
      {"params": params()}, frames, t, d["prompt_embeds"], wan.Layout.block_causal(k, local_attn_frames=window)
  )
  assert np.abs(np.asarray(cached_flow) - np.asarray(full[:, 6 - k :])).max() < 1e-5


def test_rolling_window_with_sink_changes_only_past_the_window():
  d = fixture_case(1)
  noise = channels_last(d["initial_noise"])

  def run(capacity, sink):
    config = streaming.FewStepConfig.from_step_count(1, 4, capacity_frames=capacity, sink_frames=sink)
    sampler = streaming.StreamingSampler(wan.WanModel(CFG), params(), config)
    return np.asarray(sampler.generate(d["prompt_embeds"], noise, key=jax.random.key(0)))

  full, window = run(6, 0), run(3, 1)
  np.testing.assert_allclose(window[:, :3], full[:, :3], atol=1e-6)  # the window still holds everything
  assert np.abs(window[:, 3:] - full[:, 3:]).max() > 1e-3  # frame 1 was evicted from frame 3 on


def test_image_to_video_keeps_the_image_latent_first():
  d = fixture_case(1)
  config = streaming.FewStepConfig.from_step_count(1, 4, capacity_frames=6)
  sampler = streaming.StreamingSampler(wan.WanModel(CFG), params(), config)
  image_latent = channels_last(d["output_latents"])[:, :1]
  video = sampler.generate(d["prompt_embeds"], channels_last(d["initial_noise"])[:, 1:], key=jax.random.key(0),
                           image_latent=image_latent)
  assert video.shape == (1, 6, 8, 8, 16)
  np.testing.assert_array_equal(np.asarray(video[:, :1]), image_latent)
