"""A long preemptible run survives: SIGTERM checkpoints and exits 0, a non-finite update stops the
run before it saves (or is skipped), one trainer per workdir with the config it started with, and
metrics that stay one row per step across a kill and a resume. The CLI tests run real
`python -m cf_jax.train` subprocesses on the tiny stage-2a config."""
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cf_jax import weights
from cf_jax.data import records
from cf_jax.training import divergence
from cf_jax.training import preemption
from cf_jax.training import workdir as workdir_lib
from cf_jax.training.trainer import Trainer
from tests.test_training import tiny_config

ROOT = pathlib.Path(__file__).parent.parent
CONFIG = "configs/causal_ode_chunkwise.py:tiny"


def train(workdir, *overrides: str) -> subprocess.Popen:
  """`python -m cf_jax.train` on the tiny ODE config, started in the background."""
  args = ["--config", CONFIG, "--workdir", str(workdir), "--config.tensorboard=false", *overrides]
  return subprocess.Popen([sys.executable, "-m", "cf_jax.train", *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen, timeout=300) -> tuple[int, str, str]:
  out, err = process.communicate(timeout=timeout)
  return process.returncode, out, err


def metric_rows(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def wait_for_rows(workdir, count: int, process: subprocess.Popen, checkpoint: int | None = None, timeout=300):
  """Until metrics.jsonl holds `count` rows (the run is inside its loop) and, if given, the
  checkpoint of that step is complete."""
  deadline = time.monotonic() + timeout
  while len(metric_rows(workdir)) < count or (checkpoint and checkpoint not in checkpoint_steps(workdir)):
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline
    time.sleep(0.1)


def checkpoint_steps(workdir) -> list[int]:
  """Steps of the complete checkpoints (orbax renames a checkpoint to its step when done)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def exported_generator(workdir):
  return weights.load_wan(pathlib.Path(workdir) / "export" / "generator")[1]


# -- SIGTERM ---------------------------------------------------------------------------------

def test_sigterm_checkpoints_the_current_step_and_the_rerun_is_bitwise_equal(tmp_path):
  steps = ("--config.num_steps=16", "--config.checkpoint_every=1000")
  straight = train(tmp_path / "straight", *steps)  # the reference, beside the run (2 cores)
  run = train(tmp_path / "run", *steps)
  wait_for_rows(tmp_path / "run", 2, run)
  run.send_signal(signal.SIGTERM)
  code, out, err = finish(run)
  assert code == 0, err
  assert finish(straight)[0] == 0
  stopped = len(metric_rows(tmp_path / "run"))  # one row per step, the stopped step included
  assert 3 <= stopped < 16
  assert f"stopped by a preemption signal at step {stopped}" in out
  assert checkpoint_steps(tmp_path / "run") == [stopped]  # the interval (1000) would have saved nothing
  assert not (tmp_path / "run" / "export").exists() and not (tmp_path / "run" / "lock.json").exists()

  code, out, err = finish(train(tmp_path / "run", *steps))  # the same command resumes
  assert code == 0, err
  jax.tree.map(np.testing.assert_array_equal, exported_generator(tmp_path / "run"),
               exported_generator(tmp_path / "straight"))
  rows, reference = metric_rows(tmp_path / "run"), metric_rows(tmp_path / "straight")
  assert [r["step"] for r in rows] == list(range(1, 17))
  assert [r["generator/loss"] for r in rows] == [r["generator/loss"] for r in reference]


def test_sigkill_and_resume_keep_one_metrics_row_per_step(tmp_path):
  """A killed run leaves rows past its last checkpoint and a lock naming a dead pid: the resume
  takes the lock over and drops those rows, in metrics.jsonl and (purge marker) TensorBoard."""
  workdir = tmp_path / "run"
  args = ("--config.num_steps=12", "--config.checkpoint_every=5", "--config.tensorboard=true")
  run = train(workdir, *args)
  wait_for_rows(workdir, 6, run, checkpoint=5)
  run.kill()
  run.wait()
  assert json.loads((workdir / "lock.json").read_text())["pid"] == run.pid
  killed_at = len(metric_rows(workdir))
  restored = max(s for s in checkpoint_steps(workdir) if s <= killed_at)
  assert restored < killed_at  # rows past the checkpoint exist, the resume has to drop them

  code, _, err = finish(train(workdir, *args))
  assert code == 0, err
  assert [r["step"] for r in metric_rows(workdir)] == list(range(1, 13))
  events = sorted((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 2
  assert purge_steps(events[1]) == [restored + 1]  # TensorBoard drops the first file's steps from here


def purge_steps(event_file: pathlib.Path) -> list[int]:
  """Steps of the SessionLog.START events (TensorBoard's purge markers) in a TFRecord event file."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel

  data, steps, offset = event_file.read_bytes(), [], 0
  while offset < len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
    offset += 12 + length + 4  # length, its crc, payload, its crc
    if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
      steps.append(event.step)
  return steps


def test_sigterm_stops_a_dataset_writer_without_a_partial_shard(tmp_path):
  """A real SIGTERM in the middle of shard 2: shards 0–1 stay, shard 2 leaves no file, no
  manifest; the rerun writes the rest and the records equal an uninterrupted write."""
  items = list(range(10))

  def encode(batch, first):
    if first == 5:
      os.kill(os.getpid(), signal.SIGTERM)  # arrives during shard 2's first batch
    return [{"index": i, "x": np.full((3,), i, np.float32)} for i in batch]

  out = tmp_path / "data"
  with pytest.raises(preemption.Preempted, match="SIGTERM with 2 of this host's 4 missing shards"):
    records.write_sharded(out, items, encode, items_per_shard=3, batch_size=1, description="test")
  assert sorted(p.name for p in out.iterdir()) == [records.shard_name(0, 4), records.shard_name(1, 4)]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the writer's handler is gone again

  plain = lambda batch, first: [{"index": i, "x": np.full((3,), i, np.float32)} for i in batch]
  records.write_sharded(out, items, plain, items_per_shard=3, batch_size=1, description="test")
  records.write_sharded(tmp_path / "straight", items, plain, items_per_shard=3, batch_size=1, description="test")
  for a, b in zip(records.iterate(out), records.iterate(tmp_path / "straight"), strict=True):
    assert a["index"] == b["index"]
    np.testing.assert_array_equal(a["x"], b["x"])


# -- divergence ------------------------------------------------------------------------------

def test_huge_learning_rate_stops_without_export_and_keeps_the_last_finite_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  code, _, err = finish(train(workdir, "--config.num_steps=6", "--config.optimizer.lr=1e30",
                              "--config.keep_checkpoints=2"))
  assert code == 1
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: step ") and "the generator update is not finite" in line, err
  bad = int(line.removeprefix("error: step ").split(":")[0])
  assert checkpoint_steps(workdir)[-1] == bad - 1  # every step before saved (interval 1), none after
  assert not (workdir / "export").exists()
  state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(bad - 1) / "state")
  leaves = jax.tree.leaves(state)
  assert leaves and all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact))


def test_skipping_keeps_the_state_and_counts_the_skips(tmp_path):
  c = tiny_config("causal_ode_chunkwise", num_steps=5, skip_nonfinite_updates=True, keep_checkpoints=5)
  c.optimizer.lr = 1e30
  trainer = Trainer(c, str(tmp_path))
  trainer.run()
  rows = metric_rows(tmp_path)
  skipped = [r["generator/skipped_updates"] for r in rows]
  nonfinite = [not (np.isfinite(r["generator/loss"]) and np.isfinite(r["generator/grad_norm"])) for r in rows]
  assert skipped == [float(x) for x in nonfinite] and sum(skipped) >= 1, rows
  last_good = max(r["step"] for r, bad in zip(rows, nonfinite) if not bad)
  kept = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / str(last_good) / "state")
  assert int(trainer.state.step) == 5
  jax.tree.map(np.testing.assert_array_equal, exported_generator(tmp_path), kept["params"]["generator"])


def test_guard_keeps_the_old_state_inside_jit():
  def update(state, frozen, batch):
    del frozen
    new = {"w": state["w"] * batch["scale"], "n": state["n"] + 1}
    return new, {"loss": jnp.sum(new["w"])}

  state, batch = {"w": jnp.ones(3), "n": jnp.int32(0)}, {"scale": jnp.float32(jnp.inf)}
  for skip, expected in ((True, state), (False, {"w": jnp.full(3, jnp.inf), "n": jnp.int32(1)})):
    new, metrics = jax.jit(divergence.guard(update, skip))(state, {}, batch)
    assert not metrics[divergence.FLAG]
    jax.tree.map(np.testing.assert_array_equal, new, expected)
  new, metrics = jax.jit(divergence.guard(update, True))(state, {}, {"scale": jnp.float32(2.0)})
  assert metrics[divergence.FLAG] and int(new["n"]) == 1


# -- one run per workdir ---------------------------------------------------------------------

def test_a_second_trainer_on_a_live_workdir_is_refused(tmp_path):
  first = train(tmp_path, "--config.num_steps=1000")
  wait_for_rows(tmp_path, 1, first)
  code, _, err = finish(train(tmp_path, "--config.num_steps=1000"))
  assert code == 1
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: ") and f"in use by pid {first.pid} on {socket.gethostname()}" in line, err
  first.send_signal(signal.SIGTERM)
  assert finish(first)[0] == 0


def write_lock(workdir, **holder):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lib.LOCK).write_text(json.dumps({"started": "earlier", **holder}))


def test_a_dead_holder_leaves_no_stuck_lock(tmp_path):
  dead = subprocess.Popen(["true"])
  dead.wait()
  write_lock(tmp_path / "same_host", host=socket.gethostname(), pid=dead.pid, heartbeat=time.time())
  write_lock(tmp_path / "silent", host="elsewhere", pid=1, heartbeat=time.time() - workdir_lib.STALE_AFTER_S - 1)
  write_lock(tmp_path / "alive", host="elsewhere", pid=1, heartbeat=time.time())
  for name in ("same_host", "silent"):
    lock = workdir_lib.Lock(tmp_path / name)
    lock.acquire()
    assert json.loads((tmp_path / name / workdir_lib.LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / name / workdir_lib.LOCK).exists()
  with pytest.raises(ValueError, match="in use by pid 1 on elsewhere"):
    workdir_lib.Lock(tmp_path / "alive").acquire()


def test_a_changed_config_is_refused_unless_allowed(tmp_path):
  c = tiny_config("causal_ode_chunkwise", num_steps=1)
  Trainer(c, str(tmp_path)).run()
  changed = tiny_config("causal_ode_chunkwise", num_steps=2, seed=1)
  changed.optimizer.lr = 1e-3
  with pytest.raises(ValueError, match=r"another config \(optimizer.lr: 2e-06 -> 0.001; seed: 0 -> 1\)"):
    Trainer(changed, str(tmp_path))
  # num_steps, logging, checkpointing and the mesh may change; with the flag anything may.
  allowed = tiny_config("causal_ode_chunkwise", num_steps=3, log_every=2, checkpoint_every=5)
  allowed.mesh.update(data=4, fsdp=2, tensor=1)
  Trainer(allowed, str(tmp_path))
  changed.allow_config_change = True
  Trainer(changed, str(tmp_path)).run()
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1  # now the run's config
