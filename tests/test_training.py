"""The trainer end to end on the fake 8-device mesh: every stage's tiny config trains with its
parameters sharded and overfits one batch; an interrupted run resumes exactly; exports load;
bad input fails with one line. Plus the state helpers (gradient accumulation, EMA)."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from cf_jax import weights
from cf_jax.diffusion import sampling_setup
from cf_jax.training import config as base
from cf_jax.training import state as state_lib
from cf_jax.training.trainer import STAGES as STAGE_MODULES
from cf_jax.training.trainer import Trainer

ROOT = pathlib.Path(__file__).parent.parent


def tiny_config(name: str, **overrides):
  c = base.from_file(ROOT / "configs" / f"{name}.py", "tiny")
  c.mesh.update(data=2, fsdp=2, tensor=2)
  c.tensorboard = False
  c.update(overrides)
  return c


def metric_series(workdir, key):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(l)[key] for l in lines if key in json.loads(l)]


# Stage config, the loss that must fall when overfitting one batch.
STAGES = [
    ("ar_diffusion_chunkwise", "generator/loss"),
    ("causal_ode_framewise", "generator/loss"),
    ("causal_cd_chunkwise", "generator/loss"),
    ("dmd_chunkwise", "critic/loss"),
]


def fast_learning(c):
  """Learning rates that overfit one batch in 30 steps; for DMD also the generator's EMA from step
  0. The resume tests use the same, so their updates are the overfit tests' programs (compiled
  once; the rates and the EMA start are constants in them)."""
  c.optimizer.lr = 3e-3
  if "critic_optimizer" in c:
    c.critic_optimizer.lr = 3e-3
    c.ema.start_step = 0
  return c


@pytest.mark.parametrize("name,loss_key", STAGES)
def test_tiny_stage_trains_sharded_and_overfits_one_batch(name, loss_key, tmp_path):
  c = fast_learning(tiny_config(name, num_steps=30, checkpoint_every=1000))
  c.data.num_examples = c.batch_size  # one batch, seen every step
  trainer = Trainer(c, str(tmp_path))
  kernel = trainer.state.params["generator"]["blocks"]["ffn_0"]["kernel"]
  assert kernel.sharding.spec == P(None, "fsdp", "tensor")
  mu = trainer.state.opt_state["generator"][1][0].mu["blocks"]["ffn_0"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec  # optimizer state sharded like the params
  trainer.run()

  losses = metric_series(tmp_path, loss_key)
  assert len(losses) == 30 and all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
  exported = sorted(p.name for p in (tmp_path / "export").iterdir())
  expected = {"generator"} | set(trainer.stage.trainable) | {f"{n}_ema" for n in trainer.stage.ema}
  assert set(exported) == expected
  cfg, params = weights.load_wan(tmp_path / "export" / "generator")
  np.testing.assert_array_equal(params["head"]["kernel"], np.asarray(trainer.state.params["generator"]["head"]["kernel"]))


def test_interrupted_run_resumes_exactly(tmp_path):
  """DMD (two networks, two updates, EMA, the rollout, the data order): 1 step, restart, 1 more
  step equals 2 steps bit for bit."""
  def config(steps):
    c = fast_learning(tiny_config("dmd_chunkwise", num_steps=steps, checkpoint_every=1))
    c.dmd.dfake_gen_update_ratio = 1  # both updates every step
    return c

  straight = Trainer(config(2), str(tmp_path / "straight"))
  straight.run()
  Trainer(config(1), str(tmp_path / "resumed")).run()
  resumed = Trainer(config(2), str(tmp_path / "resumed"))
  assert int(resumed.state.step) == 1
  resumed.run()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state), jax.device_get(straight.state))


def test_checkpoint_restores_onto_another_mesh(tmp_path):
  c = fast_learning(tiny_config("ar_diffusion_chunkwise", num_steps=1))  # the overfit test's first program
  first = Trainer(c, str(tmp_path))
  first.run()
  c.mesh.update(data=1, fsdp=4, tensor=2)
  c.num_steps = 2
  moved = Trainer(c, str(tmp_path))
  kernel = moved.state.params["generator"]["blocks"]["ffn_0"]["kernel"]
  assert kernel.sharding.mesh.shape["fsdp"] == 4 and kernel.sharding.spec == P(None, "fsdp", "tensor")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(moved.state), jax.device_get(first.state))
  moved.run()
  assert int(moved.state.step) == 2


def test_gradient_accumulation_equals_the_full_batch():
  w = {"a": jnp.arange(3.0), "b": jnp.ones((3, 2))}
  batch = {"x": jax.random.normal(jax.random.key(0), (8, 3))}

  def loss_fn(params, batch, key):
    del key
    y = jnp.tanh(batch["x"] * params["a"]) @ params["b"]
    return jnp.mean(y**2), {"mean_y": jnp.mean(y)}

  full, metrics = state_lib.accumulated_gradients(loss_fn, w, batch, jax.random.key(0), 1)
  accumulated, acc_metrics = state_lib.accumulated_gradients(loss_fn, w, batch, jax.random.key(0), 4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), accumulated, full)
  np.testing.assert_allclose(acc_metrics["loss"], metrics["loss"], rtol=1e-6)
  with pytest.raises(ValueError, match="does not split"):
    state_lib.accumulated_gradients(loss_fn, w, batch, jax.random.key(0), 3)


def test_ema_and_optimizer_follow_their_definitions():
  ema = state_lib.ema_update({"w": jnp.array([1.0])}, {"w": jnp.array([3.0])}, 0.99)
  np.testing.assert_allclose(ema["w"], [1.02], rtol=1e-6)
  cfg = tiny_config("dmd_chunkwise").optimizer
  cfg.update(lr=0.1, b1=0.0, b2=0.999, weight_decay=0.01, max_grad_norm=1.0)
  tx = state_lib.make_optimizer(cfg)
  p, g = jnp.array([2.0, -1.0]), jnp.array([30.0, 40.0])  # norm 50: clipped to 1
  updates, _ = tx.update(g, tx.init(p), p)
  clipped = g / 50.0
  # torch AdamW step 1 with beta1 0: p ← p·(1 − lr·wd) − lr·ĝ/(|ĝ| + eps)
  expected = p * (1 - 0.1 * 0.01) - 0.1 * clipped / (np.abs(clipped) + 1e-8)
  np.testing.assert_allclose(optax.apply_updates(p, updates), expected, rtol=1e-5)


def run_cli(*args, timeout=600):
  return subprocess.run([sys.executable, "-m", "cf_jax.train", *args], capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT)


def test_cli_rejects_unknown_keys_and_missing_checkpoints(tmp_path):
  bad_key = run_cli("--config", "configs/ar_diffusion_chunkwise.py:tiny", "--workdir", str(tmp_path / "a"),
                    "--config.optimizer.learning_rate=1")
  assert bad_key.returncode != 0 and "learning_rate" in bad_key.stderr
  missing = run_cli("--config", "configs/ar_diffusion_chunkwise.py:tiny", "--workdir", str(tmp_path / "b"),
                    "--config.init.generator=/nonexistent/ckpt")
  assert missing.returncode == 1
  assert missing.stderr.strip().splitlines()[-1].startswith("error: ") and "/nonexistent/ckpt" in missing.stderr
  assert not (tmp_path / "b" / "checkpoints").exists() or not any((tmp_path / "b" / "checkpoints").iterdir())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.stem)
def test_every_config_loads_in_both_variants_and_builds_its_stage(path):
  for variant in ("", "smoke" if path.stem in ("toy", "injectivity") else "tiny"):
    c = base.from_file(path, variant)
    if c.get("trainer") in STAGE_MODULES:
      stage = STAGE_MODULES[c.trainer].make_stage(c)
      assert "generator" in stage.networks and stage.updates


def test_export_records_how_the_generator_samples(tmp_path):
  trainer = Trainer(tiny_config("dmd_framewise_1step"), str(tmp_path))
  trainer.export()
  recorded = weights.read_info(tmp_path / "export" / "generator")["sampling"]
  # The released Causal Forcing++ 1-step model samples so (configs/causal_forcing_dmd_framewise_1step.yaml).
  assert sampling_setup.SamplingSetup.from_info(recorded) == sampling_setup.RELEASED["cfpp_1step"].setup
  assert "sampling" not in weights.read_info(tmp_path / "export" / "critic")  # not a generator
