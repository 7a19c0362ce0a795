"""Training state, optimizers, EMA and gradient accumulation, shared by every stage.

A stage trains one or two networks (`generator`, and the DMD `critic`); each has its own AdamW
with gradient clipping (spec §3.4, §5, §6.3, §7.5). Frozen networks (the consistency teacher, the
DMD real score) are not part of the state: they are inputs of the step functions.
"""
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32: iterations completed
  params: dict[str, Any]  # trainable networks by name
  opt_state: dict[str, Any]  # one optimizer state per trainable network
  ema: dict[str, Any]  # EMA shadows by network name ({} when the stage keeps none)
  rng: jax.Array  # [2] uint32 raw key data, so checkpoints hold it as a plain array

  def key(self, *fold: int | jax.Array) -> jax.Array:
    """A key for this step: the run's key folded with the step and `fold`."""
    key = jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)
    for f in fold:
      key = jax.random.fold_in(key, f)
    return key


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip the global gradient norm, then AdamW (decoupled weight decay, as torch.optim.AdamW).

  cfg: lr, b1, b2, eps, weight_decay, max_grad_norm, warmup_steps (0: constant rate, as the
  reference).
  """
  lr = cfg.lr if not cfg.warmup_steps else optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
  return optax.chain(
      optax.clip_by_global_norm(cfg.max_grad_norm),
      optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay),
  )


def apply_gradients(
    state: TrainState, name: str, grads: Any, tx: optax.GradientTransformation
) -> tuple[TrainState, jax.Array]:
  """One optimizer update of network `name`; returns the new state and the gradient norm
  before clipping."""
  updates, opt_state = tx.update(grads, state.opt_state[name], state.params[name])
  params = optax.apply_updates(state.params[name], updates)
  state = state.replace(
      params={**state.params, name: params}, opt_state={**state.opt_state, name: opt_state}
  )
  return state, optax.tree.norm(grads)


def minimize(
    state: TrainState,
    name: str,
    loss_fn: "LossFn",
    batch: dict[str, jax.Array],
    key: jax.Array,
    tx: optax.GradientTransformation,
    num_microbatches: int = 1,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One update of network `name` on `loss_fn(params, batch, key)`; metrics gain `grad_norm`."""
  grads, metrics = accumulated_gradients(loss_fn, state.params[name], batch, key, num_microbatches)
  state, grad_norm = apply_gradients(state, name, grads, tx)
  return state, {**metrics, "grad_norm": grad_norm}


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """shadow ← decay·shadow + (1 − decay)·θ, in the shadow's dtype (fp32)."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


LossFn = Callable[[Any, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def accumulated_gradients(
    loss_fn: LossFn, params: Any, batch: dict[str, jax.Array], key: jax.Array, num_microbatches: int
) -> tuple[Any, dict[str, jax.Array]]:
  """Gradients of the mean loss over `num_microbatches` equal slices of the batch.

  `loss_fn(params, batch, key) -> (loss, metrics)`. With more than one microbatch the slices are
  processed one after another in a scan (memory of one slice, one compilation); each slice gets
  its own key, and grads and metrics are averaged. Returns (grads, metrics incl. `loss`).
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if num_microbatches == 1:
    (loss, metrics), grads = grad_fn(params, batch, key)
    return grads, {**metrics, "loss": loss}

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(f"batch of {x.shape[0]} does not split into {num_microbatches} microbatches")
    return x.reshape(num_microbatches, x.shape[0] // num_microbatches, *x.shape[1:])

  def body(carry, inputs):
    i, micro = inputs
    (loss, metrics), grads = grad_fn(params, micro, jax.random.fold_in(key, i))
    carry = jax.tree.map(jnp.add, carry, (grads, {**metrics, "loss": loss}))
    return carry, None

  micro_batches = jax.tree.map(split, batch)
  first = jax.tree.map(lambda x: x[0], micro_batches)
  zeros = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: (lambda o: (o[1], {**o[0][1], "loss": o[0][0]}))(grad_fn(params, first, key))),
  )
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches), micro_batches))
  return jax.tree.map(lambda x: x / num_microbatches, total)
