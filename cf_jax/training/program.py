"""The compiled side of a training run: abstract state, shardings and jitted updates of a stage.

Built from a config and a mesh alone, with nothing allocated, so the same function serves the
trainer (live devices) and `cf_jax.compile` (compile-only devices of a TPU topology this host
does not have):

    program = build_program(config, mesh)
    with program.mesh_context():
      compiled = program.updates["generator"].lower(*program.update_args()).compile()
"""
import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cf_jax import parallel
from cf_jax.errors import UserError
from cf_jax.data import pipeline
from cf_jax.training import ar_diffusion
from cf_jax.training import consistency
from cf_jax.training import divergence
from cf_jax.training import dmd
from cf_jax.training import ode
from cf_jax.training.stage import Network, Stage
from cf_jax.training.state import TrainState

STAGES = {"ar_diffusion": ar_diffusion, "ode": ode, "consistency": consistency, "dmd": dmd}

NEGATIVE_PROMPT = "negative_prompt_embeds"  # the frozen input holding the negative prompt [Lt, D_text]


def init_fn(network: Network, data: ml_collections.ConfigDict):
  """key -> boxed params of `network`, initialized on one latent frame of the data's size."""
  cfg = network.model.config
  x = jnp.zeros((1, 1, data.latent_height, data.latent_width, cfg.in_dim))
  context = jnp.zeros((1, cfg.text_len, cfg.text_dim))
  return lambda key: network.model.init(key, x, jnp.zeros((1, 1)), context)["params"]


def abstract_params(network: Network, data: ml_collections.ConfigDict):
  """Parameter shapes of a network, boxed with their logical axis names; nothing allocated."""
  return jax.eval_shape(init_fn(network, data), jax.random.key(0))


def with_sharding(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def field_shape(field: str, data: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Shape of one example's batch field (see `pipeline`)."""
  video = (data.num_frames, data.latent_height, data.latent_width, data.channels)
  shapes = {"latents": video, "ode_latents": (pipeline.ODE_PAIR_ENTRIES, *video),
            "prompt_embeds": (data.text_len, data.text_dim)}
  return shapes[field]


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """Everything about a stage's updates that depends on the mesh but not on any value.

  param_shardings: network name -> params tree of NamedShardings (every network of the stage).
  abstract_state: the TrainState as ShapeDtypeStructs carrying their shardings.
  abstract_frozen: the frozen inputs (untrained networks' params, the negative prompt) likewise.
  abstract_batch: one global batch of the stage's fields likewise.
  updates: update name -> jitted (state, frozen, batch) -> (state, metrics), the state donated,
    guarded against non-finite results (`divergence.guard`).
  """

  config: ml_collections.ConfigDict
  mesh: Mesh
  rules: tuple[tuple[str, Any], ...]
  stage: Stage
  param_shardings: dict[str, Any]
  state_shardings: TrainState
  abstract_state: TrainState
  abstract_frozen: dict[str, Any]
  abstract_batch: dict[str, jax.ShapeDtypeStruct]
  batch_sharding: NamedSharding
  init_state: Any  # jitted params of the trainable networks -> TrainState
  updates: dict[str, Any]

  @contextlib.contextmanager
  def mesh_context(self):
    """Mesh and logical-axis rules for tracing and running the steps."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def update_args(self):
    """Abstract (state, frozen, batch) to lower an update with."""
    return self.abstract_state, self.abstract_frozen, self.abstract_batch


def check_batch(config: ml_collections.ConfigDict, mesh: Mesh, process_count: int = 1):
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % (shards * config.grad_accum):
    raise UserError(f"batch_size {config.batch_size} must split over {shards} data-parallel devices × "
                     f"grad_accum {config.grad_accum}; change --config.batch_size or the mesh")
  if config.batch_size % process_count:
    raise UserError(f"batch_size {config.batch_size} must split over {process_count} hosts")


def make_stage(config: ml_collections.ConfigDict) -> Stage:
  if config.trainer not in STAGES:
    raise UserError(f"trainer {config.trainer!r}: choose one of {sorted(STAGES)}")
  return STAGES[config.trainer].make_stage(config)


def build_program(config: ml_collections.ConfigDict, mesh: Mesh, process_count: int = 1) -> TrainProgram:
  """The abstract state, shardings and jitted updates of `config`'s stage on `mesh`, whose devices
  may be compile-only."""
  stage = make_stage(config)
  check_batch(config, mesh, process_count)
  rules = tuple(tuple(r) for r in config.sharding_rules)
  replicated = NamedSharding(mesh, PartitionSpec())

  boxed = {name: abstract_params(net, config.data) for name, net in stage.networks.items()}
  param_shardings = {name: parallel.param_shardings(b, mesh, rules) for name, b in boxed.items()}
  abstract = {name: with_sharding(nn.unbox(b), param_shardings[name]) for name, b in boxed.items()}

  def init_state(params: dict[str, Any]) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state={n: tx.init(params[n]) for n, tx in stage.trainable.items()},
        ema={n: jax.tree.map(jnp.copy, params[n]) for n in stage.ema},
        rng=jax.random.key_data(jax.random.key(config.seed)),
    )

  shapes = jax.eval_shape(init_state, {n: abstract[n] for n in stage.trainable})
  # Optimizer moments and EMA shadows are sharded like their parameters; counters, step and rng
  # are replicated.
  state_shardings = TrainState(
      step=replicated,
      params={n: param_shardings[n] for n in stage.trainable},
      opt_state={
          n: optax.tree_utils.tree_map_params(tx, lambda _, s: s, shapes.opt_state[n], param_shardings[n],
                                              transform_non_params=lambda _: replicated)
          for n, tx in stage.trainable.items()
      },
      ema={n: param_shardings[n] for n in stage.ema},
      rng=replicated,
  )

  abstract_frozen = {n: abstract[n] for n in stage.networks if n not in stage.trainable}
  if stage.needs_negative_prompt:
    abstract_frozen[NEGATIVE_PROMPT] = jax.ShapeDtypeStruct(
        (config.data.text_len, config.data.text_dim), jnp.float32, sharding=replicated)
  batch_sharding = parallel.batch_sharding(mesh, 1, rules)
  abstract_batch = {
      f: jax.ShapeDtypeStruct((config.batch_size, *field_shape(f, config.data)), jnp.float32,
                              sharding=parallel.batch_sharding(mesh, 1 + len(field_shape(f, config.data)), rules))
      for f in stage.fields
  }
  frozen_shardings = jax.tree.map(lambda x: x.sharding, abstract_frozen)
  updates = {
      u.name: jax.jit(divergence.guard(u.fn, config.skip_nonfinite_updates),
                      in_shardings=(state_shardings, frozen_shardings, batch_sharding),
                      out_shardings=(state_shardings, None), donate_argnums=(0,))
      for u in stage.updates
  }
  return TrainProgram(
      config=config, mesh=mesh, rules=rules, stage=stage, param_shardings=param_shardings,
      state_shardings=state_shardings, abstract_state=with_sharding(shapes, state_shardings),
      abstract_frozen=abstract_frozen, abstract_batch=abstract_batch, batch_sharding=batch_sharding,
      init_state=jax.jit(init_state, out_shardings=state_shardings), updates=updates,
  )
