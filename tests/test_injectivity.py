"""The injectivity experiment: its flow-map metrics against the closed form of a linear teacher,
its non-injectivity measure on random models (exactly 0 for an AR teacher under teacher forcing,
clearly not for a bidirectional one), the student's few-step map and the smoke run end to end."""
import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cf_jax.experiments import injectivity
from cf_jax.models import wan
from cf_jax.models.config import WanConfig

ROOT = pathlib.Path(__file__).parent.parent
FRAMES, SIZE, FRAMES_PER_BLOCK = 4, 8, 2


def random_teacher():
  cfg = WanConfig.toy()
  model = wan.WanModel(cfg)
  x = jnp.zeros((1, FRAMES, SIZE, SIZE, cfg.in_dim))
  context = jnp.zeros((1, cfg.text_len, cfg.text_dim))
  params = nn.unbox(model.init(jax.random.key(0), x, jnp.zeros((1, FRAMES)), context))["params"]
  return cfg, model, params


def test_resampled_noise_keeps_the_frames_up_to_each_block():
  z = jax.random.normal(jax.random.key(0), (FRAMES, SIZE, SIZE, 4))
  noise = np.asarray(injectivity.resampled_after_block(z, jax.random.key(1), FRAMES_PER_BLOCK, 3))
  assert noise.shape == (2, 3, FRAMES, SIZE, SIZE, 4)
  for b in range(2):
    end = FRAMES_PER_BLOCK * (b + 1)
    np.testing.assert_array_equal(noise[b, :, :end], np.broadcast_to(z[:end], noise[b, :, :end].shape))
    assert np.all(noise[b, :, end:] != np.asarray(z[end:]))  # redrawn
    assert np.all(noise[b, 0, end:] != noise[b, 1, end:])  # independently


def linear_teacher(causal: bool, elements: int, seed: int) -> np.ndarray:
  """The matrix L [F·E, F·E] of a linear teacher e = L·z on flattened videos (E elements a frame),
  zero above the block diagonal for an AR one (block b sees the noise up to block b only)."""
  size = FRAMES_LINEAR * elements
  matrix = np.random.default_rng(seed).normal(size=(size, size)) / np.sqrt(size)
  block = np.arange(size) // (FRAMES_PER_BLOCK * elements)  # the block of each row and column
  return np.where(block[None, :] > block[:, None], 0.0, matrix) if causal else matrix


FRAMES_LINEAR, ELEMENTS = 6, 24


def linear_map_samples(matrix: np.ndarray, noises: int, resamples: int):
  """noise [Z, F, E] and the linear teacher's endpoint, redrawn and free endpoints around it."""
  apply = lambda z: (z.reshape(*z.shape[:-2], -1) @ matrix.T).reshape(z.shape)
  key = jax.random.key(0)
  z = np.asarray(jax.random.normal(key, (noises, FRAMES_LINEAR, ELEMENTS)))
  redrawn = np.stack([np.asarray(injectivity.resampled_after_block(jnp.asarray(zi), jax.random.fold_in(key, i + 1),
                                                                   FRAMES_PER_BLOCK, resamples)) for i, zi in enumerate(z)])
  free = np.asarray(jax.random.normal(jax.random.fold_in(key, 10**6), (noises, resamples, FRAMES_LINEAR, ELEMENTS)))
  return z, apply(z), apply(redrawn), apply(free), apply


def closed_form_non_injectivity(matrix: np.ndarray) -> np.ndarray:
  """||L[rows of b, columns after b]||_F / ||L[rows of b]||_F per block: with z ~ N(0, I) the
  within-redraw and total variances of block b's elements."""
  rows = FRAMES_PER_BLOCK * ELEMENTS
  blocks = matrix.shape[0] // rows
  return np.array([np.linalg.norm(matrix[b * rows : (b + 1) * rows, (b + 1) * rows :])
                   / np.linalg.norm(matrix[b * rows : (b + 1) * rows]) for b in range(blocks)])


def test_flow_map_metrics_match_a_linear_teacher_in_closed_form():
  """For e = L·z, the conditional mean of block b given z up to block b is the causal part of L
  applied to z: a student returning it is at 0 from the conditional mean and at the
  non-injectivity from the endpoint; a student returning the endpoint is the other way round."""
  matrix = linear_teacher(causal=False, elements=ELEMENTS, seed=0)
  causal_part = linear_teacher(causal=True, elements=ELEMENTS, seed=0)
  z, endpoint, redrawn, free, apply = linear_map_samples(matrix, noises=200, resamples=64)
  conditional_mean = (z.reshape(len(z), -1) @ causal_part.T).reshape(z.shape)
  expected = closed_form_non_injectivity(matrix)  # [3]
  assert expected[0] > 0.5 and expected[-1] == 0

  measured = np.stack([injectivity.non_injectivity(r, f, FRAMES_PER_BLOCK) for r, f in zip(redrawn, free)])
  np.testing.assert_allclose(np.sqrt(np.mean(measured**2, axis=0)), expected, rtol=0.05, atol=1e-6)
  distances = lambda student: {k: np.sqrt(np.mean(np.stack(v) ** 2, axis=0)) for k, v in zip(
      injectivity.FLOW_MAP, zip(*[injectivity.flow_map_distances(s, e, r, f, FRAMES_PER_BLOCK).values()
                                 for s, e, r, f in zip(student, endpoint, redrawn, free)]))}
  mean_student = distances(conditional_mean)
  np.testing.assert_allclose(mean_student["to_endpoint"], expected, rtol=0.05, atol=1e-6)
  np.testing.assert_allclose(mean_student["to_conditional_mean"], 0.0, atol=0.05)
  endpoint_student = distances(endpoint)
  np.testing.assert_allclose(endpoint_student["to_endpoint"], 0.0, atol=1e-12)
  np.testing.assert_allclose(endpoint_student["to_conditional_mean"], expected, rtol=0.05, atol=1e-6)
  other = distances(apply(np.asarray(jax.random.normal(jax.random.key(7), z.shape))))  # an independent draw
  np.testing.assert_allclose(other["to_endpoint"], np.sqrt(2.0), rtol=0.05)


def test_flow_map_metrics_coincide_for_an_ar_linear_teacher():
  matrix = linear_teacher(causal=True, elements=ELEMENTS, seed=1)
  z, endpoint, redrawn, free, _ = linear_map_samples(matrix, noises=4, resamples=4)
  student = endpoint + 0.3 * np.asarray(jax.random.normal(jax.random.key(3), endpoint.shape))
  for s, e, r, f in zip(student, endpoint, redrawn, free):
    np.testing.assert_allclose(injectivity.non_injectivity(r, f, FRAMES_PER_BLOCK), 0.0, atol=1e-6)
    d = injectivity.flow_map_distances(s, e, r, f, FRAMES_PER_BLOCK)
    np.testing.assert_allclose(d["to_conditional_mean"], d["to_endpoint"], rtol=1e-5)


def test_non_injectivity_is_zero_for_the_ar_teacher_only():
  cfg, model, params = random_teacher()
  keys = jax.random.split(jax.random.key(2), 2)
  clean = np.asarray(jax.random.normal(keys[0], (1, FRAMES, SIZE, SIZE, cfg.in_dim)))
  cond = np.asarray(jax.random.normal(keys[1], (1, cfg.text_len, cfg.text_dim)))
  measure = lambda layout: injectivity.sample_teacher_map(
      model, params, layout, clean, cond, np.zeros_like(cond), jax.random.key(3), FRAMES_PER_BLOCK, resamples=3,
      batch_size=10)
  ar, bidirectional = measure(wan.Layout.block_causal(FRAMES_PER_BLOCK)), measure(wan.Layout.bidirectional())
  assert bidirectional.redrawn.shape == (1, 2, 3, FRAMES, SIZE, SIZE, cfg.in_dim)
  np.testing.assert_array_equal(ar.noise, bidirectional.noise)  # the same z for both
  ar = injectivity.non_injectivity(ar.redrawn[0], ar.free[0], FRAMES_PER_BLOCK)  # [2]
  bidirectional = injectivity.non_injectivity(bidirectional.redrawn[0], bidirectional.free[0], FRAMES_PER_BLOCK)
  assert np.abs(ar).max() <= 1e-5, ar
  assert bidirectional[0] > 1e-3, bidirectional  # block 0 moves with the noise of block 1 (random: ~0.02)
  assert abs(bidirectional[1]) <= 1e-5  # the last block has no later frames


def test_few_step_student_block_ignores_later_noise():
  """The student's output of block 0 is a function of block 0's noise (and the history)."""
  cfg, model, params = random_teacher()
  keys = jax.random.split(jax.random.key(4), 4)
  shape = (1, FRAMES, SIZE, SIZE, cfg.in_dim)
  noise, clean, other = (jax.random.normal(k, shape) for k in keys[:3])
  context = jax.random.normal(keys[3], (1, cfg.text_len, cfg.text_dim))
  changed = noise.at[:, FRAMES_PER_BLOCK:].set(other[:, FRAMES_PER_BLOCK:])
  timesteps = np.asarray([1000.0, 937.5, 833.3, 625.0])
  run = lambda z: injectivity.few_step_ode(model, params, FRAMES_PER_BLOCK, z, clean, context, timesteps)
  a, b = run(noise), run(changed)
  np.testing.assert_allclose(a[:, :FRAMES_PER_BLOCK], b[:, :FRAMES_PER_BLOCK], atol=1e-5)
  assert np.abs(a[:, FRAMES_PER_BLOCK:] - b[:, FRAMES_PER_BLOCK:]).max() > 1e-3


def test_teachers_match_within_the_relative_tolerance_on_both_distances():
  bidirectional = {"frame_fd": 10.0, "motion_fd": 400.0}
  assert injectivity.at_least_as_good({"frame_fd": 10.4, "motion_fd": 300.0}, bidirectional, 0.05)
  assert not injectivity.at_least_as_good({"frame_fd": 10.6, "motion_fd": 300.0}, bidirectional, 0.05)
  assert not injectivity.at_least_as_good({"frame_fd": 9.0, "motion_fd": 421.0}, bidirectional, 0.05)
  assert not injectivity.at_least_as_good({"frame_fd": 10.4, "motion_fd": 300.0}, bidirectional, 0.0)


def made_up_results(floors: dict[str, list[float]]) -> dict:
  """results.json's layout, a run per seed with the given ODE loss floors per arm."""
  distances = {"frame_fd": 2.0, "motion_fd": 3.0}
  flow_map = {"to_endpoint": [[0.1, 0.2, 0.3]] * 2, "to_conditional_mean": [[0.4, 0.5, 0.6]] * 2}
  runs = {arm: [{"seed": s, "ode_loss_floor": f, "after_ode": distances, "after_dmd": distances,
                 "flow_map": flow_map} for s, f in enumerate(values)] for arm, values in floors.items()}
  teachers = {"bidirectional": distances, "autoregressive": {"extra_steps": 300, **distances}, "matched": True,
              "tolerance": 0.05}
  return {"seeds": [0, 1], "real_reference": distances, "runs": runs, "teachers": teachers,
          "non_injectivity": {"autoregressive": [[0.0, 0.0, 0.0]] * 2, "bidirectional": [[0.5, 0.3, 0.0]] * 2}}


def test_report_gives_mean_and_std_over_seeds(tmp_path):
  results = made_up_results({"autoregressive": [0.01, 0.03], "bidirectional": [0.1, 0.1]})
  table = injectivity.format_table(results)
  assert "| autoregressive teacher | 0.02 ± 0.014 | 2 / 2 ± 0 / 2 ± 0 |" in table  # std with ddof 1
  assert ("| bidirectional teacher | 0.50 ± 0.00 / 0.30 ± 0.00 / 0.00 ± 0.00 | 0.10 ± 0.00 / 0.20 ± 0.00 / "
          "0.30 ± 0.00 | 0.40 ± 0.00 / 0.50 ± 0.00 / 0.60 ± 0.00 |") in table
  assert "300 teacher-forcing steps beyond" in table and "NOT" not in table and "(within 5%)" in table
  injectivity.plot(results, tmp_path / "plot.png")
  with Image.open(tmp_path / "plot.png") as image:
    assert image.size[0] > 1000


def test_smoke_run_writes_every_arm_and_seed(tmp_path, toy_smoke_run):
  # The toy run's data and teachers (written on the 8-device mesh, as this run's stages are, so
  # their compilations are the toy's, read from the persistent cache).
  run = subprocess.run(
      [sys.executable, "-m", "cf_jax.experiments.injectivity", "--config", "configs/injectivity.py:smoke",
       "--workdir", str(tmp_path), f"--config.toy_workdir={toy_smoke_run}",
       "--compilation_cache", os.environ["JAX_COMPILATION_CACHE_DIR"]],
      capture_output=True, text=True, timeout=600, cwd=ROOT,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["seeds"] == [0]
  for arm in injectivity.ARMS:
    assert [r["seed"] for r in results["runs"][arm]] == [0]
    for r in results["runs"][arm]:
      assert np.isfinite(r["ode_loss_floor"])
      assert {"frame_fd", "motion_fd"} <= set(r["after_ode"]) and {"frame_fd", "motion_fd"} <= set(r["after_dmd"])
      for name in injectivity.FLOW_MAP:
        distances = np.asarray(r["flow_map"][name])
        assert distances.shape == (1, 3) and np.all(np.isfinite(distances)), distances
    assert {"frame_fd", "motion_fd"} <= set(results["teachers"][arm])
    assert np.asarray(results["non_injectivity"][arm]).shape == (1, 3)  # one z, three blocks
  assert np.abs(results["non_injectivity"]["autoregressive"]).max() <= 1e-5
  assert results["non_injectivity"]["bidirectional"][0][0] > 0
  ar_flow_map = results["runs"]["autoregressive"][0]["flow_map"]  # the AR teacher's mean is its endpoint
  np.testing.assert_allclose(ar_flow_map["to_conditional_mean"], ar_flow_map["to_endpoint"], rtol=0.05)
  assert results["teachers"]["autoregressive"]["extra_steps"] in (0, 2)  # at most one smoke round
  assert results["teachers"]["bidirectional"]["extra_steps"] == 2  # the equal budget from one checkpoint
  table = (tmp_path / "results.md").read_text()
  assert "| autoregressive teacher |" in table and "| bidirectional teacher |" in table
  assert "| autoregressive teacher |" in run.stdout
  with Image.open(tmp_path / "injectivity.png") as image:
    assert image.size[0] > 1000
