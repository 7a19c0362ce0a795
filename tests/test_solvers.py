"""Solvers against the closed-form probability-flow ODE of Gaussian data, and the UniPC schedule."""
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax.diffusion import solvers

DATA_STD = 0.5


def gaussian_flow(x, t):
  """Exact flow of x0 ~ N(0, s²): x0̂ = (1−σ)s²/((1−σ)²s² + σ²)·x, v = (x − x0̂)/σ."""
  sigma = t / 1000.0
  x0 = (1 - sigma) * DATA_STD**2 / ((1 - sigma) ** 2 * DATA_STD**2 + sigma**2) * x
  return (x - x0) / sigma


def exact_state(x, sigma_from, sigma_to):
  """The ODE keeps x_σ / std(σ) constant, std(σ)² = (1−σ)²s² + σ²."""
  std = lambda s: np.sqrt((1 - s) ** 2 * DATA_STD**2 + s**2)
  return x * std(sigma_to) / std(sigma_from)


def test_unipc_schedule_matches_reference_timesteps():
  sigmas, timesteps = solvers.unipc_schedule(50, shift=5.0)
  # The spec (algorithms.md §1.7) lists the reference's network timesteps.
  assert timesteps[:6].tolist() == [999, 995, 991, 987, 982, 978]
  assert timesteps[-5:].tolist() == [356, 302, 241, 172, 92]
  assert len(timesteps) == 50 and sigmas[-1] == 0.0 and np.all(np.diff(sigmas) < 0)


def test_unipc_is_second_order_and_euler_first_order():
  """Halving the step size divides UniPC's error by ~4 and Euler's by ~2 (smooth part of the
  ODE, away from σ = 0 where the last step jumps to the x0 prediction)."""
  x = jnp.asarray([2.0, -1.0])

  def errors(n):
    sigmas = np.linspace(0.95, 0.1, n + 1)
    want = exact_state(np.asarray(x), sigmas[0], sigmas[-1])
    unipc_out = solvers.unipc(gaussian_flow, x, 1000.0 * sigmas[:-1], sigmas)
    euler_out, _ = solvers.euler(gaussian_flow, x, 1000.0 * sigmas[:-1], sigmas)
    return np.abs(np.asarray(unipc_out) - want).max(), np.abs(np.asarray(euler_out) - want).max()

  (u16, e16), (u32, e32) = errors(16), errors(32)
  assert 3.0 < u16 / u32 < 5.5
  assert 1.8 < e16 / e32 < 2.2
  assert u32 < e32 / 10


@pytest.mark.parametrize("num_steps", [4, 10])
def test_unipc_is_exact_for_point_mass_data(num_steps):
  """With x0 fixed the x0 prediction is exact at every level, so every order is exact."""
  target = 0.7

  def flow(x, t):
    return (x - target) / (t / 1000.0)

  sigmas, _ = solvers.unipc_schedule(num_steps, shift=5.0)
  x = jnp.asarray([1.3, -0.4])
  out = solvers.unipc(flow, x, 1000.0 * sigmas[:-1], sigmas)
  np.testing.assert_allclose(np.asarray(out), target, atol=1e-6)


def test_euler_records_states_before_steps():
  sigmas = np.array([1.0, 0.5, 0.0])
  out, recorded = solvers.euler(lambda x, t: jnp.ones_like(x), jnp.zeros(2), [1000.0, 500.0], sigmas, record=(0, 1))
  np.testing.assert_allclose(np.asarray(out), -1.0)
  np.testing.assert_allclose([float(r[0]) for r in recorded], [0.0, -0.5])


def test_guidance_conventions():
  cond, uncond = jnp.float32(2.0), jnp.float32(1.0)
  assert float(solvers.guidance(cond, uncond, 3.0)) == 4.0  # u + 3(c − u)
  # DMD: x0_c + g(x0_c − x0_u) with g = 3 is weight 1 + g.
  assert float(solvers.guidance(cond, uncond, 1 + 3.0)) == float(cond + 3.0 * (cond - uncond))
