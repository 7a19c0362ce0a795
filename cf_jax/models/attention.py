"""Attention with structured masks, behind one function and three backends.

A mask is described by its structure (`BlockMask`: tokens per frame, frames per block, plain
block-causal or teacher-forcing layout, local window), never by a dense matrix. Each backend turns
the structure into what it needs:

* `xla`    — builds the dense boolean mask and runs plain softmax attention (CPU, tests, any mask);
* `splash` — Pallas splash attention with a block-sparse mask that skips empty tiles (TPU; runs in
             interpret mode elsewhere so tests can compare it with `xla`);
* `cudnn`  — `jax.nn.dot_product_attention(implementation='cudnn')` on each query block against
             the contiguous key ranges it may see, merged by log-sum-exp (GPU).

Layouts (spec: architecture.md §3.3-3.4; N = F·S tokens, block size K·S):

* bidirectional     every token sees every token.
* block_causal      a token of block j sees all tokens of blocks ≤ j (bidirectional inside its block),
                    optionally only the last `local_attn_frames` frames up to its block's end.
* teacher_forcing   sequence [clean (N) ; noisy (N)]: clean block j sees clean blocks ≤ j; noisy
                    block j sees clean blocks < j and its own noisy block, nothing else.
"""
import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Backend = Literal["xla", "splash", "cudnn"]
BACKENDS = ("xla", "splash", "cudnn")

LayoutKind = Literal["bidirectional", "block_causal", "teacher_forcing"]


@dataclasses.dataclass(frozen=True)
class BlockMask:
  """Static description of a self-attention mask over frame-structured tokens.

  Hashable, so it can be a static argument or a Flax module attribute.
  """

  kind: LayoutKind
  num_frames: int  # F: latent frames in one half of the sequence
  tokens_per_frame: int  # S
  frames_per_block: int = 1  # K
  local_attn_frames: int = -1  # -1: global; else keys only in the last W frames up to block end

  def __post_init__(self):
    if self.kind not in ("bidirectional", "block_causal", "teacher_forcing"):
      raise ValueError(f"unknown attention layout {self.kind!r}")
    if self.kind != "bidirectional" and self.num_frames % self.frames_per_block:
      raise ValueError(
          f"{self.num_frames} latent frames do not split into blocks of {self.frames_per_block}; "
          "use a frame count divisible by frames_per_block"
      )
    if self.kind == "teacher_forcing" and self.local_attn_frames != -1:
      raise ValueError("the teacher-forcing mask has no local window (as in the reference)")
    if self.local_attn_frames != -1 and self.local_attn_frames < self.frames_per_block:
      raise ValueError(
          f"local_attn_frames={self.local_attn_frames} is shorter than a block of "
          f"{self.frames_per_block} frames; use at least frames_per_block"
      )

  @property
  def num_tokens(self) -> int:
    """N = F·S, the tokens of one copy of the video."""
    return self.num_frames * self.tokens_per_frame

  @property
  def seq_len(self) -> int:
    """Length of the attended sequence (2N for teacher forcing)."""
    return 2 * self.num_tokens if self.kind == "teacher_forcing" else self.num_tokens

  @property
  def block_tokens(self) -> int:
    return self.frames_per_block * self.tokens_per_frame

  def allowed(self, q, kv, xp=jnp):
    """Elementwise: may query index `q` attend to key index `kv`? Works on numpy or jnp ints."""
    if self.kind == "bidirectional":
      return xp.ones(xp.broadcast_shapes(xp.shape(q), xp.shape(kv)), dtype=bool)
    n, bs = self.num_tokens, self.block_tokens
    if self.kind == "block_causal":
      end = (q // bs + 1) * bs
      visible = kv < end
      if self.local_attn_frames != -1:
        visible &= kv >= end - self.local_attn_frames * self.tokens_per_frame
      return visible
    # teacher_forcing
    is_clean_q = q < n
    block = xp.where(is_clean_q, q, q - n) // bs
    clean_visible = kv < (block + 1) * bs
    noisy_visible = ((kv >= n + block * bs) & (kv < n + (block + 1) * bs)) | (kv < block * bs)
    return xp.where(is_clean_q, clean_visible, noisy_visible)

  def dense(self) -> np.ndarray:
    """The [L, L] boolean mask; for the `xla` backend and for tests only."""
    idx = np.arange(self.seq_len)
    return self.allowed(idx[:, None], idx[None, :], xp=np)

  def key_ranges(self) -> tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]:
    """(q_start, q_end, ((k_start, k_end), ...)) for every query block: the contiguous key ranges
    it may see. Together they describe the mask exactly; segmented backends iterate over them."""
    n, bs, s = self.num_tokens, self.block_tokens, self.tokens_per_frame
    if self.kind == "bidirectional":
      return ((0, n, ((0, n),)),)
    out = []
    for j in range(self.num_frames // self.frames_per_block):
      q0, q1 = j * bs, (j + 1) * bs
      if self.kind == "block_causal":
        k0 = 0 if self.local_attn_frames == -1 else max(0, q1 - self.local_attn_frames * s)
        out.append((q0, q1, ((k0, q1),)))
      else:
        out.append((q0, q1, ((0, q1),)))
    if self.kind == "teacher_forcing":
      for j in range(self.num_frames // self.frames_per_block):
        q0, q1 = n + j * bs, n + (j + 1) * bs
        own = (q0, q1)
        out.append((q0, q1, ((0, j * bs), own) if j else (own,)))
    return tuple(out)


def attend(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, Lk, H, Dh]
    v: jax.Array,  # [B, Lk, H, Dh]
    mask: BlockMask | None,
    backend: Backend = "xla",
) -> jax.Array:  # [B, Lq, H, Dh]
  """Softmax attention with scale 1/sqrt(Dh); `mask=None` means every query sees every key."""
  if backend == "xla":
    return _attend_xla(q, k, v, mask)
  if backend == "splash":
    from cf_jax.models import splash  # Pallas import is deferred: only TPU runs need it.

    return splash.attend_splash(q, k, v, mask)
  if backend == "cudnn":
    return attend_segmented(q, k, v, mask, implementation="cudnn")
  raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def attend_prefix(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, H, Lk, Dh] a KV cache layer, heads-major
    v: jax.Array,  # [B, H, Lk, Dh]
    kv_len: jax.Array,  # [] int: every query sees keys [0, kv_len)
    backend: Backend = "xla",
) -> jax.Array:  # [B, Lq, H, Dh]
  """Attention of one block's queries to the filled part of a KV cache (no mask within it)."""
  if backend == "cudnn":
    lengths = jnp.full((q.shape[0],), kv_len, jnp.int32)
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)  # the cuDNN call takes [B, Lk, H, Dh]
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")
  if backend == "splash":
    from cf_jax.models import splash

    # The kernel takes [B, Lk, H, Dh] and transposes back to heads-major itself.
    return splash.attend_splash_prefix(q, k.swapaxes(1, 2), v.swapaxes(1, 2), kv_len)
  return _attend_xla(q, k, v, None, kv_len, kv_heads_major=True)


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
