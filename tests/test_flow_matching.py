"""Flow-matching scheduler vs the reference's stored tables (fixture e) and the spec's values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax.diffusion import flow_matching as fm
from tests.conftest import load_fixture


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
  return load_fixture("scheduler")


@pytest.mark.parametrize("shift", [5, 8])
def test_training_grid_bit_exact(ref, shift):
  grid = fm.training_grid(float(shift))
  np.testing.assert_array_equal(np.asarray(grid.timesteps), ref[f"shift{shift}_timesteps"])
  np.testing.assert_array_equal(np.asarray(grid.sigmas), ref[f"shift{shift}_sigmas"])


@pytest.mark.parametrize("shift", [5, 8])
def test_training_weights(ref, shift):
  weights = np.asarray(fm.training_weights(fm.training_grid(float(shift))))
  expected = ref[f"shift{shift}_training_weights"]
  assert weights[0] == 0.0
  # atol: the smallest weights (t near 1000) carry the reference's float32 cancellation in y − min y.
  np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weights.sum(), 1000.0, rtol=1e-6)


@pytest.mark.parametrize("shift", [5, 8])
def test_bf16_round(ref, shift):
  rounded = fm.bf16_round(fm.training_grid(float(shift)).timesteps)
  np.testing.assert_array_equal(np.asarray(rounded), ref[f"shift{shift}_timesteps_bf16_roundtrip"])


@pytest.mark.parametrize("name", ["4step", "2step", "1step"])
def test_warp_denoising_steps(ref, name):
  warped = fm.warp_denoising_steps(ref[f"warped_{name}_input"])
  assert warped.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(warped), ref[f"warped_{name}"], rtol=0, atol=1e-4)


def test_warp_trailing_zero():
  np.testing.assert_array_equal(np.asarray(fm.warp_denoising_steps([1000, 0])), [1000.0, 0.0])


def test_add_noise_weight_target(ref):
  grid = fm.training_grid(5.0)
  t = ref["add_noise_timestep"]  # [10], off-grid values and 0 included
  np.testing.assert_array_equal(np.asarray(fm.sigma_at(grid, t)), ref["add_noise_sigma_used"])
  out = fm.add_noise(ref["add_noise_x0"], ref["add_noise_noise"], t, grid)
  np.testing.assert_allclose(np.asarray(out), ref["add_noise_out"], rtol=0, atol=1e-6)
  weight = fm.training_weight(grid, fm.training_weights(grid), t)
  np.testing.assert_allclose(np.asarray(weight), ref["training_weight_out"], rtol=1e-5, atol=1e-6)
  target = fm.flow_target(ref["add_noise_x0"], ref["add_noise_noise"])
  np.testing.assert_array_equal(np.asarray(target), ref["training_target_out"])


def test_euler_step_reference_quirk(ref):
  grid = fm.training_grid(5.0)
  v, t, x = ref["step_model_output"], ref["add_noise_timestep"], ref["add_noise_x0"]
  first6 = fm.euler_step(grid, v[:6], t[:6], x[:6])
  np.testing.assert_allclose(np.asarray(first6), ref["step_out_first6"], rtol=0, atol=1e-6)
  # Two of the ten timesteps snap to the last grid entry, which sends every sample to σ = 0.
  all10 = fm.euler_step(grid, v, t, x)
  np.testing.assert_allclose(np.asarray(all10), ref["step_out_all10"], rtol=0, atol=1e-6)
  per_sample = np.asarray(fm.euler_step(grid, v, t, x, reference_quirk=False))
  np.testing.assert_allclose(per_sample[:6], ref["step_out_first6"], rtol=0, atol=1e-6)
  np.testing.assert_allclose(per_sample[7:9], ref["step_out_all10"][7:9], rtol=0, atol=1e-6)


def test_dmd_timestep(ref):
  t = fm.dmd_timestep(ref["dmd_timestep_from_int"])
  np.testing.assert_array_equal(np.asarray(t), ref["dmd_timestep_shifted_clamped"])


@pytest.mark.parametrize("shift", [5, 8])
def test_flow_x0_conversions(ref, shift):
  grid = fm.training_grid(float(shift))
  t, x_t = ref["add_noise_timestep"], ref["conv_xt"]
  x0 = fm.flow_to_x0(x_t, ref["step_model_output"], t, grid)
  np.testing.assert_allclose(np.asarray(x0), ref[f"flow_to_x0_shift{shift}"], rtol=0, atol=1e-6)
  flow = fm.x0_to_flow(x_t, ref["add_noise_x0"], t, grid)
  np.testing.assert_allclose(np.asarray(flow), ref[f"x0_to_flow_shift{shift}"], rtol=1e-6, atol=1e-6)


def test_ode_grid_spec_values():
  timesteps = np.asarray(fm.ode_grid().timesteps)
  assert timesteps.shape == (48,)
  expected = [1000.0, 995.763, 937.5, 833.333, 625.0, 96.154]
  np.testing.assert_allclose(timesteps[[0, 1, 12, 24, 36, 47]], expected, atol=1e-3)
  warped = np.asarray(fm.warp_denoising_steps([1000, 750, 500, 250]))
  np.testing.assert_array_equal(warped, timesteps[[0, 12, 24, 36]])


def test_shift5_grid_spec_values():
  timesteps = np.asarray(fm.training_grid(5.0).timesteps)
  np.testing.assert_allclose(timesteps[[1, 997, 998, 999]], [999.80, 14.82, 9.92, 4.98], atol=5e-3)
  assert int(fm.nearest_index(fm.training_grid(5.0), 0.0)) == 999


def test_round_trip_and_unsnapped_sigma():
  grid = fm.training_grid(5.0)
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x0 = jax.random.normal(k1, (2, 3, 4, 4, 5))  # [B, F, H, W, C]
  noise = jax.random.normal(k2, (2, 3, 4, 4, 5))  # [B, F, H, W, C]
  t = jax.random.uniform(k3, (2, 3), minval=20.0, maxval=1000.0)  # [B, F]
  for snap in (True, False):
    x_t = fm.add_noise(x0, noise, t, grid, snap=snap)
    flow = fm.x0_to_flow(x_t, x0, t, grid, snap=snap)
    np.testing.assert_allclose(np.asarray(flow), np.asarray(noise - x0), atol=2e-4)
    np.testing.assert_allclose(np.asarray(fm.flow_to_x0(x_t, flow, t, grid, snap=snap)), np.asarray(x0), atol=1e-5)
  sigma = np.asarray(t)[..., None, None, None] / 1000.0
  expected = (1.0 - sigma) * np.asarray(x0) + sigma * np.asarray(noise)
  np.testing.assert_allclose(np.asarray(fm.add_noise(x0, noise, t, grid, snap=False)), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(fm.sigma_at(grid, t, snap=False)), np.asarray(t) / 1000.0, rtol=1e-6)


def test_jit_and_scalar_timestep():
  grid = fm.training_grid(5.0)
  x = jnp.ones((2, 3, 4, 4, 5))  # [B, F, H, W, C]
  v = jnp.full((2, 3, 4, 4, 5), 0.5)  # [B, F, H, W, C]
  t = jnp.array([[1000.0, 937.5, 625.0], [500.0, 250.0, 100.0]])  # [B, F]
  stepped = jax.jit(fm.euler_step, static_argnames="reference_quirk")(grid, v, t, x)
  np.testing.assert_allclose(np.asarray(stepped), np.asarray(fm.euler_step(grid, v, t, x)))
  between = fm.euler_step_between(x, v, fm.sigma_at(grid, t), 0.0)
  np.testing.assert_allclose(np.asarray(between), np.asarray(x - 0.5 * fm.sigma_at(grid, t)[..., None, None, None]))
  scalar = jax.jit(fm.flow_to_x0)(x, v, jnp.float32(937.5), grid)
  np.testing.assert_allclose(np.asarray(scalar), 1.0 - 0.5 * 0.9375, rtol=1e-6)
  draws = jax.jit(fm.dmd_timestep)(jnp.array([0, 500, 999]))
  np.testing.assert_allclose(np.asarray(draws), [20.0, 833.3333, 980.0], rtol=1e-6)
