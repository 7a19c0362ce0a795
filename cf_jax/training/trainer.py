"""The training loop shared by every stage: mesh, weights, state, data, checkpoints, metrics.

    trainer = Trainer(config, workdir)   # loads or resumes; nothing runs yet
    trainer.run()                        # iterations up to config.num_steps, then export

Layout of a workdir:

    config.json                 the locked config of the run (a resume must match it, see `workdir`)
    lock.json                   which process runs on the workdir now
    checkpoints/<step>/         orbax: `state` (every network, optimizer state, EMA, step, rng)
                                and `data` (the input iterator's position)
    export/<network>/           params checkpoints the sampler and the next stage load
                                (generator, generator_ema, critic)
    metrics.jsonl, tensorboard/ metrics

A run restarted on the same workdir resumes from its latest checkpoint, on whatever mesh it is
given now: the state is restored straight into the new shardings. SIGTERM or SIGINT checkpoints
the current step and stops (`preemption`); a non-finite update stops the run before it saves
(`divergence`).
"""
import contextlib
import json
import pathlib
import time
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from cf_jax import checkpoint
from cf_jax import parallel
from cf_jax import weights
from cf_jax.data import pipeline
from cf_jax.data import records
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import sampling_setup
from cf_jax.diffusion import streaming
from cf_jax.errors import UserError
from cf_jax.training import divergence
from cf_jax.training import preemption
from cf_jax.training import program as program_lib
from cf_jax.training import workdir as workdir_lib
from cf_jax.training.metrics import MetricWriter, check_wandb
from cf_jax.training.stage import Network, Stage

STAGES = program_lib.STAGES


def initial_params(network: Network, name: str, data: ml_collections.ConfigDict, seed: int, shardings=None):
  """A network's params from its init checkpoint, or random (keyed by seed and name) when it has
  none; placed with `shardings` when given."""
  if network.init:
    _, params = weights.load_wan(network.init, network.model.config, network.entry)
    return weights.to_device(params, shardings)
  if jax.process_index() == 0:
    print(f"{name}: no init checkpoint set, random initialization")
  init = program_lib.init_fn(network, data)
  key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
  return jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(key)


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


class Trainer:
  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = checkpoint.as_epath(workdir)
    checkpoint.check_writable(self.workdir)
    check_wandb(config.wandb)
    self.mesh = parallel.make_mesh(**config.mesh)
    # The abstract state, shardings and jitted updates, as `cf_jax.compile` builds them.
    self.program = program_lib.build_program(config, self.mesh, jax.process_count())
    self.rules = self.program.rules
    self.stage: Stage = self.program.stage
    self.param_shardings = self.program.param_shardings
    self.abstract_state = self.program.abstract_state
    exported = {**self.abstract_state.params, **self.abstract_state.ema}
    checkpoint.check_free_space(self.workdir, _nbytes(self.abstract_state) + _nbytes(exported),
                                "a checkpoint and the exports")

    self._data = pipeline.host_batches(  # opened before any weights load: a bad dataset fails fast
        pipeline.source(config.data, self.stage.fields),
        config.batch_size // jax.process_count(),
        config.data.shuffle_seed,
    )
    # Nothing is written before this line: a bad config, dataset or disk leaves no workdir behind.
    self._lock = workdir_lib.claim(self.workdir, config)
    self.frozen = self._frozen_inputs()
    self.manager = ocp.CheckpointManager(
        self.workdir / "checkpoints",
        item_names=("state", "data"),
        options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
    )
    latest = self.manager.latest_step()
    if latest is None:
      params = {n: self._load(n) for n in self.stage.trainable}
      with self.mesh_context():
        self.state = self.program.init_state(params)
    else:
      restored = self.manager.restore(
          latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(self.abstract_state),
                                          data=ocp.args.JsonRestore())
      )
      self.state = restored["state"]
      self._data.set_state(restored["data"])
    self.updates = self.program.updates
    self._sampler = self._sample_context = None  # built by the first sample_videos()
    self._write_config()

  # -- set-up -----------------------------------------------------------------------------

  def mesh_context(self):
    """Mesh and logical-axis rules for tracing and running the steps."""
    return self.program.mesh_context()

  def _load(self, name: str) -> Any:
    """Initial params of a network, placed on the mesh."""
    with self.mesh_context():
      return initial_params(self.stage.networks[name], name, self.config.data, self.config.seed,
                            self.param_shardings[name])

  def _frozen_inputs(self) -> dict[str, Any]:
    frozen = {n: self._load(n) for n in self.stage.networks if n not in self.stage.trainable}
    if self.stage.needs_negative_prompt:
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      frozen[program_lib.NEGATIVE_PROMPT] = jax.device_put(negative_prompt_embeds(self.config.data), replicated)
    return frozen

  def _write_config(self):
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      (self.workdir / "config.json").write_text(self.config.to_json_best_effort(indent=1))

  # -- loop -------------------------------------------------------------------------------

  def next_batch(self) -> dict[str, jax.Array]:
    local = next(self._data)
    return {
        k: jax.make_array_from_process_local_data(parallel.batch_sharding(self.mesh, v.ndim, self.rules), v)
        for k, v in local.items()
    }

  def run(self) -> dict[str, float]:
    """Iterates to config.num_steps (checkpointing on the way), exports, returns the last
    logged metrics. Raises preemption.Preempted after checkpointing on SIGTERM/SIGINT, and
    divergence.Diverged (saving nothing more) at a non-finite update."""
    c = self.config
    start = int(self.state.step)
    writer = MetricWriter(str(self.workdir), c.tensorboard, c.wandb, json.loads(c.to_json_best_effort()), start)
    progress = tqdm.tqdm(total=c.num_steps, initial=start, desc=c.trainer, unit="it",
                         disable=jax.process_index() != 0)
    monitor = divergence.Monitor(c.skip_nonfinite_updates, tuple(self.updates))
    logged, last = {}, {}
    tick, videos, iterations = time.perf_counter(), 0, 0
    with self.mesh_context(), preemption.Signals(synced=True) as signals, self._stopping(writer, progress):
      for n in range(start, c.num_steps):
        for update in self.stage.updates:
          if n % update.every == 0:
            self.state, metrics = self.updates[update.name](self.state, self.frozen, self.next_batch())
            metrics = monitor.add(n + 1, update.name, metrics)
            last.update({f"{update.name}/{k}": v for k, v in metrics.items()})
            videos += c.batch_size
        self.state = self.state.replace(step=self.state.step + 1)
        iterations += 1
        progress.update(1)
        done = n + 1
        if done % c.log_every == 0 or done == c.num_steps:
          monitor.check()
          logged = {k: float(v) for k, v in jax.device_get(last).items()} | monitor.skipped()
          elapsed = time.perf_counter() - tick
          logged["perf/seconds_per_iteration"] = elapsed / iterations
          logged["perf/videos_per_second"] = videos / elapsed
          tick, videos, iterations = time.perf_counter(), 0, 0
          writer.write(done, logged)
          progress.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logged.items() if k.endswith("loss")})
        if c.get("sample_every") and done % c.sample_every == 0:
          writer.write_videos(done, "samples", self.sample_videos())
        preempted = signals.reached(done)
        if done % c.checkpoint_every == 0 or done == c.num_steps or preempted:
          monitor.check()
          self.save()
        if preempted:
          self.manager.wait_until_finished()
          raise preemption.Preempted(f"stopped by a preemption signal at step {done}, checkpoint saved in "
                                     f"{self.workdir / 'checkpoints'}; run the same command to resume")
      self.manager.wait_until_finished()
      self.export()
    return logged

  @contextlib.contextmanager
  def _stopping(self, writer: MetricWriter, progress: tqdm.tqdm):
    """However run() ends: metrics closed, a checkpoint in flight finished, the workdir freed."""
    try:
      yield
    finally:
      progress.close()
      writer.close()
      self.manager.wait_until_finished()
      self._lock.release()

  def sample_videos(self) -> np.ndarray:
    """Few-step videos [N, F, h, w, C] of the generator (its EMA once it has one) for the first
    `num_sample_videos` prompts of the data, from the same noise every time, so that successive
    samples show what training changed."""
    c = self.config
    if self._sampler is None:
      few_step = sampling_setup.SamplingSetup.from_train_config(c).few_step_config(capacity_frames=c.data.num_frames)
      self._sampler = streaming.StreamingSampler(self.stage.networks["generator"].model, None, few_step)
      prompts = pipeline.source(c.data, ("prompt_embeds",))
      count = min(c.num_sample_videos, len(prompts))
      self._sample_context = np.stack([prompts[i]["prompt_embeds"] for i in range(count)])  # [N, Lt, D]
    generator = self.state.ema if "generator" in self.state.ema else self.state.params
    self._sampler.params = generator["generator"]  # the sampler's compiled functions take params as input
    key = jax.random.key(c.seed)
    shape = (len(self._sample_context), c.data.num_frames, c.data.latent_height, c.data.latent_width,
             self._sampler.model.config.in_dim)
    with self.mesh_context():
      videos = self._sampler.generate(jnp.asarray(self._sample_context), noise_lib.normal(key, shape),
                                      jax.random.fold_in(key, 1))
    return np.asarray(multihost_utils.process_allgather(videos, tiled=True), np.float32)

  def save(self):
    step = int(self.state.step)
    self.manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(self.state), data=ocp.args.JsonSave(self._data.get_state())),
    )

  def export(self) -> dict[str, pathlib.Path]:
    """Writes each trained network (and EMA) as a params checkpoint under export/."""
    out = {}
    sources = {**self.state.params, **{f"{n}_ema": p for n, p in self.state.ema.items()}}
    for name, params in sources.items():
      net = self.stage.networks[name.removesuffix("_ema")]
      path = self.workdir / "export" / name
      info = {"network": weights.NETWORKS["wan"].name, "config": checkpoint.config_dict(net.model.config)}
      if name.removesuffix("_ema") == "generator":  # what `sample` needs to run it without flags
        info["sampling"] = sampling_setup.SamplingSetup.from_train_config(self.config).to_info()
      checkpoint.save_params(path, params, info, overwrite=True)
      out[name] = path
    return out


def negative_prompt_embeds(data: ml_collections.ConfigDict) -> np.ndarray:
  """The negative prompt's embedding [Lt, D_text]: from a `.npy` file, or the first record of an
  encode_prompts directory; 'zeros' (the default of the synthetic source) is the zero embedding."""
  path = data.negative_prompt_embeds
  if path == "zeros" or (not path and data.kind == "synthetic"):
    return np.zeros((data.text_len, data.text_dim), np.float32)
  if not path:
    raise UserError("data.negative_prompt_embeds is empty: encode the negative prompt (see README) and set it")
  path = pathlib.Path(path)
  if path.suffix == ".npy":
    if not path.is_file():
      raise UserError(f"data.negative_prompt_embeds: {path} does not exist")
    return np.load(path).astype(np.float32)
  return np.asarray(next(records.iterate(path))["prompt_embeds"], np.float32)

