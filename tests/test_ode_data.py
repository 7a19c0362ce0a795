"""ODE-pair generation: record layout, determinism, resume after interruption without duplicates or
gaps, and the ODE stage training on what it wrote."""
import pathlib

import jax
import numpy as np

from cf_jax.data import pipeline
from cf_jax.data import records
from cf_jax.training import config as base
from cf_jax.training import ode_pairs
from cf_jax.training.trainer import Trainer
from tests.test_training import tiny_config

ROOT = pathlib.Path(__file__).parent.parent


def ode_config(**overrides):
  c = base.from_file(ROOT / "configs" / "ode_data_chunkwise.py", "tiny")
  c.update({"items_per_shard": 3, "batch_size": 2, "num_examples": 8, **overrides})
  return c


def test_ode_pairs_layout_resume_and_training(tmp_path):
  c = ode_config()
  out = tmp_path / "pairs"
  ode_pairs.generate(c, str(out))
  first = sorted(records.iterate(out), key=lambda r: r["index"])
  assert [r["index"] for r in first] == list(range(8))
  source = pipeline.source(c.data, ("latents", "prompt_embeds"))
  for r in first[:2]:
    pairs = r["ode_latents"].astype(np.float32)
    assert pairs.shape == (6, 6, 8, 8, 16) and r["ode_latents"].dtype == np.float16
    noise = jax.random.normal(jax.random.fold_in(jax.random.key(c.seed), r["index"]), pairs.shape[1:])
    np.testing.assert_allclose(pairs[0], noise, atol=2e-3)  # the state before step 0 is the noise
    np.testing.assert_allclose(pairs[-1], source[r["index"]]["latents"], atol=4e-3)  # the ground truth
    np.testing.assert_array_equal(r["prompt_embeds"], source[r["index"]]["prompt_embeds"])
    assert np.abs(pairs[4] - pairs[3]).mean() > 0.05  # the solver moved past t = 625

  # Interrupted: one shard and the manifest lost (a shard is renamed into place only when whole).
  shards = sorted(out.glob("shard-*.array_record"))
  assert len(shards) == 3
  shards[1].unlink()
  (out / records.MANIFEST).unlink()
  ode_pairs.generate(c, str(out))
  again = sorted(records.iterate(out), key=lambda r: r["index"])
  assert [r["index"] for r in again] == list(range(8))
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["ode_latents"], b["ode_latents"])

  t = tiny_config("causal_ode_chunkwise", num_steps=2)
  t.data.update(kind="records", path=str(out))
  t.batch_size = 4
  trainer = Trainer(t, str(tmp_path / "run"))
  metrics = trainer.run()
  assert np.isfinite(metrics["generator/loss"])


def test_bidirectional_teacher_keeps_the_ground_truth_last(tmp_path):
  c = ode_config(teacher="bidirectional", num_examples=2)
  ode_pairs.generate(c, str(tmp_path))
  source = pipeline.source(c.data, ("latents",))
  for r in records.iterate(tmp_path):
    np.testing.assert_allclose(r["ode_latents"][-1].astype(np.float32), source[r["index"]]["latents"], atol=4e-3)
