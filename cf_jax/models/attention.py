"""Attention with structured masks: one dispatch over a registry of backends.

A mask is described by its structure (`masks.BlockMask`: tokens per frame, frames per block,
plain block-causal or teacher-forcing layout, local window), never by a dense matrix. Every
backend provides `attend` (self- or cross-attention under a mask) and `attend_prefix` (a block's
queries against the filled part of a KV cache) and turns the structure into what it needs:

* `blocksparse` — each query block against the concatenation of its key ranges, flash-style
                  backward (`cf_jax.models.blocksparse`; CPU);
* `xla`         — the dense boolean mask and plain softmax attention (the yardstick in tests);
* `splash`      — Pallas splash attention with a block-sparse mask that skips empty tiles (TPU;
                  runs in interpret mode elsewhere so tests can compare it with `xla`);
* `cudnn`       — `jax.nn.dot_product_attention(implementation='cudnn')` on each query block
                  against the concatenation of the key ranges it may see (GPU, half precision);
* `auto`        — the one of these made for the platform (`resolve_backend`).
"""
import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

from cf_jax import parallel
from cf_jax.errors import UserError
from cf_jax.models import blocksparse
from cf_jax.models.masks import BlockMask

Backend = Literal["auto", "blocksparse", "xla", "splash", "cudnn"]
BACKENDS = ("auto", "blocksparse", "xla", "splash", "cudnn")

__all__ = ["BACKENDS", "Backend", "BlockMask", "attend", "attend_prefix", "attend_segmented", "resolve_backend"]


@dataclasses.dataclass(frozen=True)
class Kernels:
  """What a backend provides; both return [B, Lq, H, Dh] from q [B, Lq, H, Dh]."""

  attend: Callable[..., jax.Array]  # (q, k, v [B, Lk, H, Dh], mask: BlockMask | None)
  attend_prefix: Callable[..., jax.Array]  # (q, k, v [B, H, Lk, Dh] a KV cache layer, kv_len: [] int)


def resolve_backend(backend: Backend, dtype=jnp.float32, platform: str | None = None) -> str:
  """The concrete backend `backend` names: `auto` is splash on TPU, cudnn on GPU in half
  precision (its kernels have no fp32) and blocksparse otherwise, for the platform the program is
  traced for (`parallel.target_platform`), so an AOT compile for a TPU topology gets splash."""
  if backend not in BACKENDS:
    raise UserError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
  if backend != "auto":
    return backend
  platform = platform or parallel.target_platform()
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "blocksparse"


def kernels(backend: Backend, dtype=jnp.float32) -> Kernels:
  return _REGISTRY[resolve_backend(backend, dtype)]()


def attend(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, Lk, H, Dh]
    v: jax.Array,  # [B, Lk, H, Dh]
    mask: BlockMask | None,
    backend: Backend = "auto",
) -> jax.Array:  # [B, Lq, H, Dh]
  """Softmax attention with scale 1/sqrt(Dh); `mask=None` means every query sees every key."""
  return kernels(backend, q.dtype).attend(q, k, v, mask)


def attend_prefix(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, H, Lk, Dh] a KV cache layer, heads-major
    v: jax.Array,  # [B, H, Lk, Dh]
    kv_len: jax.Array | int,  # [] int: every query sees keys [0, kv_len)
    backend: Backend = "auto",
) -> jax.Array:  # [B, Lq, H, Dh]
  """Attention of one block's queries to the filled part of a KV cache (no mask within it)."""
  return kernels(backend, q.dtype).attend_prefix(q, k, v, kv_len)


def _attend_xla(q, k, v, mask: BlockMask | None, kv_len: jax.Array | None = None, kv_heads_major: bool = False):
  scale = q.shape[-1] ** -0.5
  kv = "bhkd" if kv_heads_major else "bkhd"
  logits = jnp.einsum(f"bqhd,{kv}->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None and mask.kind != "bidirectional":
    dense = mask.allowed(
        jax.lax.broadcasted_iota(jnp.int32, logits.shape[-2:], 0),
        jax.lax.broadcasted_iota(jnp.int32, logits.shape[-2:], 1),
    )
    logits = jnp.where(dense, logits, jnp.finfo(jnp.float32).min)
  if kv_len is not None:
    visible = jax.lax.broadcasted_iota(jnp.int32, logits.shape[-1:], 0) < kv_len
    logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum(f"bhqk,{kv}->bqhd", probs, v)


def attend_segmented(q, k, v, mask: BlockMask | None, implementation: str | None = "cudnn"):
  """Block-sparse attention from a dense kernel: each query block attends to the concatenation of
  the key ranges it may see (static slices, so masked tiles cost nothing).

  Ranges are concatenated rather than merged by log-sum-exp because the kernels' returned
  log-sum-exp carries no gradient. `implementation` is passed to `jax.nn.dot_product_attention`;
  tests use 'xla' on CPU to check the decomposition that the GPU runs with 'cudnn'.
  """
  if mask is None or mask.kind == "bidirectional":
    return jax.nn.dot_product_attention(q, k, v, implementation=implementation)
  outputs = []
  for q0, q1, ranges in mask.key_ranges():
    keys, values = (jnp.concatenate([x[:, k0:k1] for k0, k1 in ranges], axis=1) for x in (k, v))
    outputs.append(jax.nn.dot_product_attention(q[:, q0:q1], keys, values, implementation=implementation))
  return jnp.concatenate(outputs, axis=1)


def _attend_xla_prefix(q, k, v, kv_len):
  return _attend_xla(q, k, v, None, kv_len, kv_heads_major=True)


def _attend_cudnn_prefix(q, k, v, kv_len):
  lengths = jnp.full((q.shape[0],), kv_len, jnp.int32)
  k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)  # the cuDNN call takes [B, Lk, H, Dh]
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")


def _splash() -> Kernels:
  from cf_jax.models import splash  # Pallas import is deferred: only TPU runs need it.

  return Kernels(splash.attend_splash, splash.attend_splash_prefix)


_REGISTRY: dict[str, Callable[[], Kernels]] = {
    "blocksparse": lambda: Kernels(blocksparse.attend, blocksparse.attend_prefix),
    "xla": lambda: Kernels(_attend_xla, _attend_xla_prefix),
    "splash": _splash,
    "cudnn": lambda: Kernels(attend_segmented, _attend_cudnn_prefix),
}
