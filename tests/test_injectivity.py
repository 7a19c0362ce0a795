"""The injectivity experiment: its non-injectivity measure on random models (exactly 0 for an AR
teacher under teacher forcing, clearly not for a bidirectional one) and its smoke run end to end."""
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


def test_non_injectivity_is_zero_for_the_ar_teacher_only():
  cfg, model, params = random_teacher()
  keys = jax.random.split(jax.random.key(2), 2)
  clean = np.asarray(jax.random.normal(keys[0], (1, FRAMES, SIZE, SIZE, cfg.in_dim)))
  cond = np.asarray(jax.random.normal(keys[1], (1, cfg.text_len, cfg.text_dim)))
  measure = lambda layout: injectivity.non_injectivity(
      model, params, layout, clean, cond, np.zeros_like(cond), jax.random.key(3), FRAMES_PER_BLOCK, resamples=3,
      batch_size=9)
  ar = measure(wan.Layout.block_causal(FRAMES_PER_BLOCK))  # [1, 2]
  bidirectional = measure(wan.Layout.bidirectional())
  assert ar.shape == bidirectional.shape == (1, 2)
  assert np.abs(ar).max() <= 1e-5, ar
  assert bidirectional[0, 0] > 1e-3, bidirectional  # block 0 moves with the noise of block 1 (random: ~0.02)
  assert abs(bidirectional[0, 1]) <= 1e-5  # the last block has no later frames


def made_up_results(floors: dict[str, list[float]]) -> dict:
  """results.json's layout, a run per seed with the given ODE loss floors per arm."""
  distances = {"frame_fd": 2.0, "motion_fd": 3.0}
  runs = {arm: [{"seed": s, "ode_loss_floor": f, "after_ode": distances, "after_dmd": distances}
                for s, f in enumerate(values)] for arm, values in floors.items()}
  return {"seeds": [0, 1], "real_reference": distances, "runs": runs,
          "non_injectivity": {"autoregressive": [[0.0, 0.0, 0.0]] * 2, "bidirectional": [[0.5, 0.3, 0.0]] * 2}}


def test_report_gives_mean_and_std_over_seeds(tmp_path):
  results = made_up_results({"autoregressive": [0.01, 0.03], "bidirectional": [0.1, 0.1]})
  table = injectivity.format_table(results)
  assert "| autoregressive teacher | 0.02 ± 0.014 | 2 ± 0 |" in table  # std with ddof 1
  assert table.splitlines()[3].endswith("| 0.5 / 0.3 / 0 |")
  injectivity.plot(results, tmp_path / "plot.png")
  with Image.open(tmp_path / "plot.png") as image:
    assert image.size[0] > 1000


def test_smoke_run_writes_every_arm_and_seed(tmp_path, request):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user runs it
  cache = request.config.cache.mkdir("injectivity_xla")  # compilations, kept between test runs
  run = subprocess.run(
      [sys.executable, "-m", "cf_jax.experiments.injectivity", "--config", "configs/injectivity.py:smoke",
       "--workdir", str(tmp_path), "--compilation_cache", str(cache)],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env=env,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["seeds"] == [0]
  for arm in injectivity.ARMS:
    assert [r["seed"] for r in results["runs"][arm]] == [0]
    for r in results["runs"][arm]:
      assert np.isfinite(r["ode_loss_floor"])
      assert {"frame_fd", "motion_fd"} <= set(r["after_ode"]) and {"frame_fd", "motion_fd"} <= set(r["after_dmd"])
    assert np.asarray(results["non_injectivity"][arm]).shape == (1, 3)  # one z, three blocks
  assert np.abs(results["non_injectivity"]["autoregressive"]).max() <= 1e-5
  assert results["non_injectivity"]["bidirectional"][0][0] > 0
  table = (tmp_path / "results.md").read_text()
  assert "| autoregressive teacher |" in table and "| bidirectional teacher |" in table
  assert "| autoregressive teacher |" in run.stdout
  with Image.open(tmp_path / "injectivity.png") as image:
    assert image.size[0] > 1000
