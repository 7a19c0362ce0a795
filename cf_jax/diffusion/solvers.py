"""Multi-step ODE solvers for flow models, and classifier-free guidance (spec: algorithms.md §1.7).

A flow model predicts v ≈ ε − x0 at x_σ = (1 − σ)·x0 + σ·ε, so the probability-flow ODE is
dx/dσ = v. `flow_fn(x, t)` is the model (with guidance already applied) and `t = 1000·σ` unless a
schedule says otherwise. The solvers are plain Python loops over jitted model calls: the step
count is small and the model call dominates.
"""
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FlowFn = Callable[[jax.Array, jax.Array], jax.Array]


def guidance(cond: jax.Array, uncond: jax.Array, weight: float) -> jax.Array:
  """uncond + weight·(cond − uncond).

  The reference uses three conventions (spec §11.1), all this formula:
    * multi-step AR inference and consistency distillation: weight = guidance_scale (3.0), on flow;
    * ODE-pair generation: weight = 6.0, on flow;
    * DMD real score: x0_c + g·(x0_c − x0_u), i.e. weight = 1 + g (4.0), on x0.
  """
  return uncond + weight * (cond - uncond)


def euler(
    flow_fn: FlowFn,
    x: jax.Array,
    timesteps: Sequence[float],  # [N] network timesteps, descending
    sigmas: Sequence[float],  # [N + 1] noise levels, the last one the endpoint (0 for a full solve)
    record: Sequence[int] = (),
) -> tuple[jax.Array, list[jax.Array]]:
  """x_{k+1} = x_k + v(x_k, t_k)·(σ_{k+1} − σ_k). Returns the end state and the states *before*
  the steps listed in `record` (ODE-pair generation stores indices 0, 12, 24, 36)."""
  recorded = []
  for k, t in enumerate(timesteps):
    if k in record:
      recorded.append(x)
    x = x + flow_fn(x, jnp.float32(t)) * (sigmas[k + 1] - sigmas[k])
  return x, recorded


def unipc_schedule(num_steps: int = 50, shift: float = 5.0, sigma_max: float = 0.999) -> tuple[np.ndarray, np.ndarray]:
  """Noise levels and network timesteps of the reference's UniPC sampler (spec §1.7).

  σ_i = shift·s_i/(1 + (shift − 1)·s_i) with s_i = σ_max·(1 − i/N), i < N, then σ_N = 0; the
  network sees ⌊1000·σ_i⌋ (integers), while the update uses the exact σ_i.
  """
  s = sigma_max * (1.0 - np.arange(num_steps) / num_steps)
  sigmas = shift * s / (1.0 + (shift - 1.0) * s)
  timesteps = np.floor(1000.0 * sigmas)
  return np.append(sigmas, 0.0), timesteps


def unipc(flow_fn: FlowFn, x: jax.Array, timesteps: Sequence[float], sigmas: Sequence[float]) -> jax.Array:
  """UniPC (B(h) = e^h − 1 variant, order 2, data prediction, lower order at the ends) with the
  UniC corrector after every model call, as the reference's `FlowUniPCMultistepScheduler`.

  Notation: α = 1 − σ, λ = log α − log σ, m_i = x_i − σ_i·v(x_i) (the x0 prediction at the
  *uncorrected* x_i). The last step to σ = 0 returns m (λ = ∞, written out explicitly).
  """
  sigmas = np.asarray(sigmas, np.float64)
  n = len(timesteps)
  alpha = 1.0 - sigmas
  with np.errstate(divide="ignore"):
    lam = np.log(alpha) - np.log(sigmas)
  ms: list[jax.Array] = []  # x0 predictions m_0, m_1, ...
  prev_x, prev_order = None, 0
  for i in range(n):
    ms.append(x - sigmas[i] * flow_fn(x, jnp.float32(timesteps[i])))
    if i > 0:  # corrector: refine x_i from x_{i−1} with the new m_i
      x = _unipc_update(prev_x, ms, i - 1, i, prev_order, sigmas, alpha, lam, corrector=True)
    order = min(2, n - i, i + 1)
    prev_x, prev_order = x, order
    x = _unipc_update(x, ms, i, i + 1, order, sigmas, alpha, lam, corrector=False)
  return x


def _unipc_update(x, ms, i, j, order, sigmas, alpha, lam, corrector: bool):
  """One UniP (predictor) or UniC (corrector) update from level i to level j = i + 1."""
  if sigmas[j] == 0.0:  # only a predictor reaches σ = 0: λ = ∞ and the update is m_i itself
    return ms[i]
  h = lam[j] - lam[i]
  phi = np.expm1(-h)  # e^{−h} − 1 = B(h)
  base = (sigmas[j] / sigmas[i]) * x - alpha[j] * phi * ms[i]
  if corrector:
    new_diff = ms[j] - ms[i]
    if order == 1:
      return base - alpha[j] * phi * 0.5 * new_diff
    r = (lam[i - 1] - lam[i]) / h
    d1 = (ms[i - 1] - ms[i]) / r
    b1 = (phi / -h - 1.0) / phi
    b2 = 2.0 * ((phi / -h - 1.0) / -h - 0.5) / phi
    rho = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), np.array([b1, b2]))
    return base - alpha[j] * phi * (rho[0] * d1 + rho[1] * new_diff)
  if order == 1:
    return base
  r = (lam[i - 1] - lam[i]) / h
  d1 = (ms[i - 1] - ms[i]) / r
  return base - alpha[j] * phi * 0.5 * d1
