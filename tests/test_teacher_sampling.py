"""Multi-step CFG samplers against plain re-implementations with the full (cache-free) forward."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from cf_jax.convert import wan as convert_wan
from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import solvers
from cf_jax.diffusion import streaming
from cf_jax.diffusion import teacher_sampling
from cf_jax.convert import vae as convert_vae
from cf_jax.models import vae
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from tests.conftest import FIXTURES, load_fixture

CFG = WanConfig.tiny()
MODEL = wan.WanModel(CFG)


@functools.cache
def params():
  return convert_wan.load_params(FIXTURES / "wan_tiny.safetensors", CFG)


def inputs():
  d = load_fixture("dmd")
  noise = jax.random.normal(jax.random.key(0), (1, 6, 8, 8, 16))
  return noise, d["cond_prompt_embeds"][:1], d["uncond_prompt_embeds"][:1]


def test_autoregressive_sampler_equals_block_causal_recomputation():
  """Each block: Euler steps with u + 3(c − u) where c/u come from the block-causal forward over
  [earlier outputs at t = 0 ; current block at t] — no KV cache involved."""
  noise, cond, uncond = inputs()
  num_steps = 3
  got = teacher_sampling.sample_autoregressive(
      MODEL, params(), noise, cond, uncond, frames_per_block=3, solver="euler", num_steps=num_steps
  )
  grid = fm.make_grid(num_steps, shift=5.0)
  sigmas = np.append(np.asarray(grid.sigmas), 0.0)
  layout = wan.Layout.block_causal(3)
  done = []
  for b in range(2):
    x = noise[:, 3 * b : 3 * b + 3]
    for k, t in enumerate(np.asarray(grid.timesteps)):
      frames = jnp.concatenate([*done, x], axis=1)
      ts = jnp.concatenate([jnp.zeros((1, 3 * b)), jnp.full((1, 3), t)], axis=1)
      flow = [MODEL.apply({"params": params()}, frames, ts, c, layout)[:, -3:] for c in (cond, uncond)]
      x = x + solvers.guidance(*flow, 3.0) * (sigmas[k + 1] - sigmas[k])
    done.append(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(jnp.concatenate(done, axis=1)), atol=2e-5)


def test_ode_trajectory_records_the_reference_steps():
  noise, cond, uncond = inputs()
  clean = jax.random.normal(jax.random.key(1), noise.shape)
  layout = wan.Layout.block_causal(3)
  trajectory = teacher_sampling.sample_ode_trajectory(MODEL, params(), noise, clean, cond, uncond, layout)
  assert trajectory.shape == (1, 6, 6, 8, 8, 16)  # t = 1000, 937.5, 833.3, 625, ODE end, clean
  np.testing.assert_array_equal(np.asarray(trajectory[:, 0]), np.asarray(noise))
  np.testing.assert_array_equal(np.asarray(trajectory[:, -1]), np.asarray(clean))
  # The state before step 12 is 12 guided Euler steps from the noise, each teacher-forced.
  grid = fm.ode_grid()
  x = noise
  for k in range(12):
    t = jnp.full((1, 6), grid.timesteps[k])
    flow = [MODEL.apply({"params": params()}, x, t, c, layout, clean_x=clean) for c in (cond, uncond)]
    x = x + solvers.guidance(*flow, 6.0) * (grid.sigmas[k + 1] - grid.sigmas[k])
  np.testing.assert_allclose(np.asarray(trajectory[:, 1]), np.asarray(x), atol=2e-5)


def test_bidirectional_sampler_matches_ode_trajectory_without_history():
  noise, cond, uncond = inputs()
  end = teacher_sampling.sample_bidirectional(MODEL, params(), noise, cond, uncond, guidance_weight=6.0)
  trajectory = teacher_sampling.sample_ode_trajectory(MODEL, params(), noise, None, cond, uncond, wan.Layout())
  np.testing.assert_allclose(np.asarray(end), np.asarray(trajectory[:, -2]), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(trajectory[:, -1]), np.asarray(trajectory[:, -2]))


def test_block_stream_with_frames_equals_one_shot_decode():
  vae_cfg = vae.VAEConfig.tiny()
  vae_params = convert_vae.load_vae_checkpoint(FIXTURES / "wanvae_tiny.pt", vae_cfg)
  d = load_fixture("kv_inference")
  config = streaming.FewStepConfig.from_step_count(3, 2, capacity_frames=6)
  sampler = streaming.StreamingSampler(MODEL, params(), config)
  noise = np.moveaxis(d["infer_nfpb3_initial_noise"], 2, -1)
  state = sampler.start(d["infer_nfpb3_prompt_embeds"], (8, 8))
  pieces = list(streaming.with_frames(sampler.stream(state, noise, jax.random.key(0)), vae_params, vae_cfg))
  assert [p[1].shape[1] for p in pieces] == [9, 12]  # 1 + 4·2 frames, then 4·3
  latents = jnp.concatenate([p[0] for p in pieces], axis=1)
  frames = jnp.concatenate([p[1] for p in pieces], axis=1)
  np.testing.assert_allclose(np.asarray(frames), np.asarray(vae.decode(vae_params, latents, vae_cfg)), atol=1e-5)
