"""Block-sparse attention in plain XLA, for CPUs (the `blocksparse` backend).

Each query block of a `BlockMask` attends to the concatenation of the key ranges it may see
(`BlockMask.key_ranges()`, static slices): empty tiles cost nothing and no [L, L] mask is built. Heads
are moved before the sequence once, so QKᵀ and PV are batched matmuls [B·H, Lq, Dh] × [B·H, Dh,
Lk], the layout XLA:CPU runs fastest (the [B, L, H, Dh] einsum ran at a quarter of the speed).

The backward is that of flash attention: the forward keeps only its output and the per-row
log-sum-exp, and the backward recomputes the probabilities of one block at a time, so no [L, L]
probabilities live between the passes.

A prefix (the filled part of a KV cache, `kv_len` traced) is cut into ranges of the query length:
`lax.switch` picks the shortest static prefix of ranges that holds `kv_len` keys and masks only
within it, so unfilled cache rows past it cost nothing.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from cf_jax.models.masks import BlockMask

_MASKED = float(jnp.finfo(jnp.float32).min)


def attend(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, Lk, H, Dh]
    v: jax.Array,  # [B, Lk, H, Dh]
    mask: BlockMask | None,
) -> jax.Array:  # [B, Lq, H, Dh]
  """Softmax attention with scale 1/sqrt(Dh); `mask=None` means every query sees every key."""
  q, k, v = (_heads_first(x) for x in (q, k, v))  # [B, H, L, Dh]
  if mask is None or mask.kind == "bidirectional":
    return _heads_last(_softmax_attention(q, k, v, None))
  if mask.seq_len != q.shape[2]:
    raise ValueError(f"{mask} describes {mask.seq_len} tokens, the sequence has {q.shape[2]}")
  return _heads_last(_masked_attention(_plan(mask), q, k, v))


@dataclasses.dataclass(frozen=True)
class _Group:
  """Query blocks of one length whose keys, rounded to one length, run as one batched matmul."""

  query_len: int
  key_len: int  # rounded: the longest member's keys, padding masked
  members: tuple[tuple[int, tuple[tuple[int, int], ...], int], ...]  # (q_start, key ranges, keys)


@functools.lru_cache(maxsize=None)
def _plan(mask: BlockMask) -> tuple[_Group, ...]:
  """Key lengths are rounded up to the query length times a power of two (at most the longest),
  so a mask of n blocks compiles about log2(n) kernels instead of n, for at most twice the work
  of a block."""
  entries = mask.key_ranges()
  longest = max(sum(k1 - k0 for k0, k1 in ranges) for _, _, ranges in entries)
  groups: dict[tuple[int, int], list] = {}
  for q0, q1, ranges in entries:
    length = sum(k1 - k0 for k0, k1 in ranges)
    rounded = min((q1 - q0) * 2 ** math.ceil(math.log2(length / (q1 - q0))), longest)
    groups.setdefault((q1 - q0, rounded), []).append((q0, ranges, length))
  return tuple(_Group(lq, lk, tuple(members)) for (lq, lk), members in groups.items())


def _gather(group: _Group, q, k, v):
  """A group's stacked queries [G, B, H, Lq', Dh], keys and values [G, B, H, Lk', Dh] (each
  member's key ranges joined, zero-padded) and key lengths ([G, 1, 1, 1, 1], or None: no pad)."""
  keys, values = (
      jnp.stack([_padded(_concat([x[:, :, k0:k1] for k0, k1 in ranges]), group.key_len) for _, ranges, _ in group.members])
      for x in (k, v)
  )
  lengths = [length for _, _, length in group.members]
  kv_len = None if set(lengths) == {group.key_len} else jnp.array(lengths, jnp.int32)[:, None, None, None, None]
  return _query_blocks(group, q), keys, values, kv_len


def _query_blocks(group: _Group, x):  # [B, H, L, ·] -> [G, B, H, Lq', ·]
  return jnp.stack([x[:, :, q0 : q0 + group.query_len] for q0, _, _ in group.members])


def _by_position(plan: tuple[_Group, ...], blocks: list[jax.Array]) -> jax.Array:
  """Per-group [G, B, H, Lq', ·] results back into sequence order [B, H, L, ·]."""
  starts = [q0 for group in plan for q0, _, _ in group.members]
  rows = [row for group_rows in blocks for row in group_rows]
  return jnp.concatenate([rows[i] for i in sorted(range(len(starts)), key=starts.__getitem__)], axis=2)


# The whole masked attention is one custom VJP so that its residuals are q, k, v, the output and
# the log-sum-exp as they are; the per-group joined and padded keys are rebuilt in the backward
# rather than kept (they were most of the attention's memory between the passes).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _masked_attention(plan, q, k, v):  # [B, H, L, Dh] × 3 -> [B, H, L, Dh]
  return _masked_forward(plan, q, k, v)[0]


def _masked_forward(plan, q, k, v):
  outs, lses = [], []
  for group in plan:
    out, (*_, lse) = _forward(*_gather(group, q, k, v))
    outs.append(out)
    lses.append(lse)
  out, lse = _by_position(plan, outs), _by_position(plan, lses)  # [B, H, L, Dh], [B, H, L, 1]
  return out, (q, k, v, out, lse)


def _masked_backward(plan, residuals, d_out):
  q, k, v, out, lse = residuals
  d_qs = []
  d_k, d_v = jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32)
  for group in plan:
    q_g, k_g, v_g, kv_len = _gather(group, q, k, v)
    per_query = (_query_blocks(group, x) for x in (out, lse, d_out))
    d_q, d_kg, d_vg = _grads(q_g, k_g, v_g, kv_len, *per_query)  # fp32
    d_qs.append(d_q)
    for (_, ranges, _), dk_m, dv_m in zip(group.members, d_kg, d_vg):
      offset = 0
      for k0, k1 in ranges:  # each key range's rows of the joined keys go back where they came from
        d_k = d_k.at[:, :, k0:k1].add(dk_m[:, :, offset : offset + k1 - k0])
        d_v = d_v.at[:, :, k0:k1].add(dv_m[:, :, offset : offset + k1 - k0])
        offset += k1 - k0
  return _by_position(plan, d_qs).astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype)


_masked_attention.defvjp(_masked_forward, _masked_backward)


def attend_prefix(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, H, Lk, Dh] a KV cache layer, heads-major already
    v: jax.Array,  # [B, H, Lk, Dh]
    kv_len: jax.Array,  # [] int: every query sees keys [0, kv_len)
) -> jax.Array:  # [B, Lq, H, Dh]
  """Attention of one block's queries to the first `kv_len` keys."""
  q = _heads_first(q)  # [B, H, Lq, Dh]
  lq, lk = q.shape[2], k.shape[2]
  if isinstance(kv_len, int) and kv_len == lk:  # every key visible (the prompt's cross-attention cache)
    return _heads_last(_softmax_attention(q, k, v, None))
  ends = tuple(range(lq, lk, lq)) + (lk,)  # static prefix lengths, one branch each

  def branch(end, q, k, v, kv_len):
    return _softmax_attention(q, k[:, :, :end], v[:, :, :end], kv_len)

  kv_len = jnp.asarray(kv_len, jnp.int32)
  index = jnp.clip((kv_len + lq - 1) // lq - 1, 0, len(ends) - 1)  # shortest prefix holding kv_len keys
  branches = [functools.partial(branch, end) for end in ends]
  return _heads_last(jax.lax.switch(index, branches, q, k, v, kv_len))


def _heads_first(x):  # [B, L, H, Dh] -> [B, H, L, Dh]
  return x.transpose(0, 2, 1, 3)


def _heads_last(x):  # [B, H, L, Dh] -> [B, L, H, Dh]
  return x.transpose(0, 2, 1, 3)


def _padded(x, length: int):  # [B, H, L, Dh] -> [B, H, length, Dh], zeros after L
  return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))


def _concat(parts):
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=2)


def _logits(q, k, kv_len):  # [..., Lq, Dh] × [..., Lk, Dh] -> [..., Lq, Lk] fp32
  # Scaling the queries, not the logits: Lq·Dh multiplies instead of Lq·Lk.
  logits = jnp.einsum("...qd,...kd->...qk", q * q.shape[-1] ** -0.5, k, preferred_element_type=jnp.float32)
  if kv_len is not None:  # [] or broadcastable to the logits' leading axes
    visible = jnp.arange(k.shape[-2]) < kv_len  # [..., Lk]
    logits = jnp.where(visible, logits, _MASKED)
  return logits


@jax.custom_vjp
def _softmax_attention(q, k, v, kv_len):  # [..., Lq, Dh], 2 × [..., Lk, Dh], [] or None -> [..., Lq, Dh]
  return _forward(q, k, v, kv_len)[0]


def _forward(q, k, v, kv_len):
  logits = _logits(q, k, kv_len)  # [B, H, Lq, Lk]
  peak = jnp.max(logits, axis=-1, keepdims=True)  # [B, H, Lq, 1]
  unnormalized = jnp.exp(logits - peak)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  # Normalized after PV: Lq·Dh divisions instead of Lq·Lk.
  out = (jnp.einsum("...qk,...kd->...qd", unnormalized.astype(v.dtype), v, preferred_element_type=jnp.float32)
         / total).astype(v.dtype)  # [B, H, Lq, Dh]
  lse = peak + jnp.log(total)  # [B, H, Lq, 1] fp32
  return out, (q, k, v, kv_len, out, lse)


def _backward(residuals, d_out):
  q, k, v, kv_len, out, lse = residuals
  d_q, d_k, d_v = _grads(q, k, v, kv_len, out, lse, d_out)
  return d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype), None


def _grads(q, k, v, kv_len, out, lse, d_out):  # fp32 d_q, d_k, d_v
  probs = jnp.exp(_logits(q, k, kv_len) - lse)  # [B, H, Lq, Lk] fp32, recomputed
  d_out32 = d_out.astype(jnp.float32)
  d_v = jnp.einsum("...qk,...qd->...kd", probs, d_out32)
  d_probs = jnp.einsum("...qd,...kd->...qk", d_out32, v.astype(jnp.float32))
  # d logits = p ⊙ (dp − Σ_k p·dp), and Σ_k p·dp = Σ_d dO·O row by row.
  row = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1, keepdims=True)  # [B, H, Lq, 1]
  d_logits = probs * (d_probs - row) * q.shape[-1] ** -0.5
  d_q = jnp.einsum("...qk,...kd->...qd", d_logits, k.astype(jnp.float32))
  d_k = jnp.einsum("...qk,...qd->...kd", d_logits, q.astype(jnp.float32))
  return d_q, d_k, d_v


_softmax_attention.defvjp(_forward, _backward)
