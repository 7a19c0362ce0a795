"""`BlockMask`: the static structure of a self-attention mask over frame-structured tokens.

Its own module so that every attention backend (`attention`, `splash`, `blocksparse`) can import
it without importing another backend. Layouts (spec: architecture.md §3.3-3.4; N = F·S tokens,
block size K·S):

* bidirectional     every token sees every token.
* block_causal      a token of block j sees all tokens of blocks ≤ j (bidirectional inside its block),
                    optionally only the last `local_attn_frames` frames up to its block's end.
* teacher_forcing   sequence [clean (N) ; noisy (N)]: clean block j sees clean blocks ≤ j; noisy
                    block j sees clean blocks < j and its own noisy block, nothing else.
"""
import dataclasses
from typing import Literal

import jax.numpy as jnp
import numpy as np

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
    # `& | ~` rather than where(bool, bool, bool), which Mosaic (splash on TPU) cannot lower.
    return (is_clean_q & clean_visible) | (~is_clean_q & noisy_visible)

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
