"""What a training stage is, for the trainer: its networks, its updates and the data they read.

A stage module (`ar_diffusion`, `ode`, `consistency`, `dmd`) turns a config into a `Stage`. The
trainer loads every network, builds the `TrainState` of the trainable ones, and calls the
updates; it knows nothing else about the stage.
"""
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cf_jax.errors import UserError
from cf_jax.models import config as wan_config
from cf_jax.models import wan
from cf_jax.training import state as state_lib
from cf_jax.training.state import TrainState

# (state, frozen inputs, batch) -> (state, metrics). Frozen inputs: the params of the networks
# that are not trained and the negative-prompt embedding [Lt, D_text].
UpdateFn = Callable[[TrainState, dict[str, Any], dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Network:
  """A Wan DiT the stage uses and where its weights come from.

  init: a converted checkpoint, Wan safetensors (file, index or directory) or a Causal/Self
  Forcing `.pt`; empty means random initialization (tiny configs only).
  """

  model: wan.WanModel
  layout: wan.Layout
  init: str
  entry: str | None = None


@dataclasses.dataclass(frozen=True)
class Update:
  """One optimizer update, run on iterations n with n % every == 0 (DMD: the generator every
  `dfake_gen_update_ratio` iterations, the critic every iteration). Each draws its own batch."""

  name: str
  fn: UpdateFn
  every: int = 1


@dataclasses.dataclass(frozen=True)
class Stage:
  networks: dict[str, Network]
  trainable: dict[str, optax.GradientTransformation]  # network name -> its optimizer
  ema: tuple[str, ...]  # trainable networks with an EMA shadow (started from the network)
  updates: tuple[Update, ...]
  fields: tuple[str, ...]  # batch fields the updates read
  needs_negative_prompt: bool = False


def generator_only(network: Network, loss_fn: state_lib.LossFn, config: ml_collections.ConfigDict,
                   fields: tuple[str, ...]) -> Stage:
  """A stage that trains the generator alone on `loss_fn(params, batch, key)` (stage 1, ODE)."""
  tx = state_lib.make_optimizer(config.optimizer)

  def update(state, frozen, batch):
    del frozen
    return state_lib.minimize(state, "generator", loss_fn, batch, state.key(0), tx, config.grad_accum)

  return Stage({"generator": network}, {"generator": tx}, (), (Update("generator", update),), fields)


def build_model(config: ml_collections.ConfigDict, preset: str) -> wan.WanModel:
  """A Wan DiT of the named preset with the config's precision, remat and attention settings."""
  if preset not in wan_config.PRESETS:
    raise UserError(f"unknown model preset {preset!r}; choose one of {sorted(wan_config.PRESETS)}")
  return wan.WanModel(
      wan_config.PRESETS[preset](),
      dtype=jnp.dtype(config.compute_dtype),
      param_dtype=jnp.float32,
      remat_policy=config.remat_policy,
      attention_backend=config.attention_backend,
  )


def negative_context(frozen: dict[str, Any], batch_size: int) -> jax.Array:
  """The negative-prompt embedding broadcast over the batch: [B, Lt, D_text]."""
  neg = frozen["negative_prompt_embeds"]
  return jnp.broadcast_to(neg[None], (batch_size, *neg.shape))
