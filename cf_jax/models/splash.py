"""Splash attention (Pallas, TPU) for the structured masks of `masks.BlockMask`.

The mask is never materialised: `_PaddedMask` is a computable splash mask whose function calls
`BlockMask.allowed`. The kernel factory evaluates it tile by tile to find the empty tiles (skipped)
and the full ones, and the kernel re-evaluates it inside the partially masked tiles, which the
frame-structured layouts have because 1560-token frames do not align with 128-token tiles
(spec: architecture.md §3.3, §3.4, §3.7).

Queries and keys are right-padded, each to a multiple of its tile, so cross-attention (Lq ≠ Lk)
sees exactly the real keys. Pad keys are hidden from real queries and a pad query sees only the
key at its own index, so its softmax stays finite; pad outputs are sliced away. For a target other than TPU
the kernel runs in interpret mode, so CPU tests exercise the same logic; a TPU target compiled
from a CPU host gets the real kernel.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from cf_jax import parallel
from cf_jax.models.masks import BlockMask

INTERPRET_ENV = "CF_JAX_SPLASH_INTERPRET"  # "1": emulate the kernel even for a TPU target
_TPU_TILE = 512  # large tiles amortise the per-tile overhead on TPU
_INTERPRET_TILE = 128  # the smallest legal tile: interpret mode pays per element, not per tile
_BATCH_AXES = ("data", "fsdp")
_HEAD_AXIS = "tensor"


class _PaddedMask(splash_mask._ComputableMask):  # pylint: disable=protected-access
  """`BlockMask` (None: every key) over `q_len` queries and `kv_len` keys, right-padded to
  `padded` = (queries, keys).

  Equal and hashable by value, so splash's mask processing (cached by mask) is shared.
  """

  def __init__(self, mask: BlockMask | None, q_len: int, kv_len: int, padded: tuple[int, int]):
    self.block_mask = None if mask is None or mask.kind == "bidirectional" else mask
    self.q_len, self.kv_len = q_len, kv_len
    super().__init__(shape=padded, mask_function=self._allowed)

  def _allowed(self, q_ids, kv_ids):  # broadcastable int arrays -> bool
    """Called with numpy tiles by the kernel factory and with jnp tiles inside the kernel."""
    xp = np if isinstance(q_ids, np.ndarray) else jnp
    visible = (q_ids < self.q_len) & (kv_ids < self.kv_len)
    if self.block_mask is not None:
      visible = visible & self.block_mask.allowed(q_ids, kv_ids, xp=xp)
    # A pad query sees the key of its own index alone (as the reference pads self-attention;
    # modulo the keys when there are fewer), so its softmax stays finite; its row is dropped.
    return visible | ((q_ids >= self.q_len) & (kv_ids == q_ids % self.shape[1]))

  def __getitem__(self, idx) -> np.ndarray:  # [q tile, kv tile] bool
    """One tile, as the kernel factory scans them all. The real queries of one block share their
    row, so one row per block is evaluated and repeated (a 65k-token scan: seconds, not minutes)."""
    q_slice, kv_slice = idx
    rows = np.arange(*q_slice.indices(self.shape[0]))  # [q tile]
    cols = np.arange(*kv_slice.indices(self.shape[1]))  # [kv tile]
    step = self.q_len if self.block_mask is None else self.block_mask.block_tokens
    firsts = np.where(rows < self.q_len, rows - rows % step, rows)  # pad rows are each their own
    firsts, row_of = np.unique(firsts, return_inverse=True)
    return self._allowed(firsts[:, None], cols[None, :])[row_of]

  def _key(self):
    return self.block_mask, self.q_len, self.kv_len, self.shape

  def __eq__(self, other: object):
    if not isinstance(other, _PaddedMask):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    return hash((_PaddedMask, self._key()))


def interpret_mode() -> bool:
  """Whether the kernel is emulated: when asked for (CF_JAX_SPLASH_INTERPRET=1) or when the target
  is not a TPU (`parallel.target_platform`: compile-only TPU devices on a CPU host are a TPU
  target)."""
  return os.environ.get(INTERPRET_ENV) == "1" or parallel.target_platform() != "tpu"


def _tile(length: int, interpret: bool) -> int:
  """Kernel tile for a sequence, never larger than the sequence rounded up to 128. Padding to a
  512 multiple costs under 512 tokens: 32,760 -> 32,768 and 65,520 -> 65,536 at 21 frames."""
  tile = _INTERPRET_TILE if interpret else _TPU_TILE
  return min(tile, -(-length // 128) * 128)


def _padded(length: int, tile: int) -> int:
  return -(-length // tile) * tile


def _kernel(mask: splash_mask.Mask, num_heads: int, tile_q: int, tile_kv: int, interpret: bool):
  """The kernel and its tile tables, built where it is called (inside the trace).

  The tables enter the program as constants; splash caches the numpy mask processing by mask, so
  rebuilding per call costs nothing after the first. They are never built eagerly: eager arrays
  would be placed on the mesh's devices, which may be compile-only.
  """
  sizes = splash.BlockSizes(
      block_q=tile_q, block_kv=tile_kv, block_kv_compute=tile_kv,
      block_q_dkv=tile_q, block_kv_dkv=tile_kv, block_kv_dkv_compute=tile_kv,
      block_q_dq=tile_q, block_kv_dq=tile_kv,
  )
  return splash.make_splash_mha(
      splash_mask.MultiHeadMask((mask,) * num_heads),
      block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret,
  )


def attend_splash(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, Lk, H, Dh]
    v: jax.Array,  # [B, Lk, H, Dh]
    mask: BlockMask | None,
) -> jax.Array:  # [B, Lq, H, Dh]
  """Masked attention with scale 1/sqrt(Dh); `mask=None` means every query sees every key (also
  for Lq ≠ Lk, e.g. cross-attention to the text: queries and keys are padded separately)."""
  lq, lk = q.shape[1], k.shape[1]
  if mask is not None and mask.kind != "bidirectional" and not mask.seq_len == lq == lk:
    raise ValueError(f"{mask} describes {mask.seq_len} tokens, the queries are {lq} and the keys {lk}")
  interpret = interpret_mode()
  tile_q, tile_kv = _tile(lq, interpret), _tile(lk, interpret)
  pq, pk = _padded(lq, tile_q), _padded(lk, tile_kv)
  padded_mask = _PaddedMask(mask, lq, lk, (pq, pk))

  def local(q, k, v):  # one shard: [b, L, h, Dh]
    kernel = _kernel(padded_mask, q.shape[2], tile_q, tile_kv, interpret)
    q = _to_kernel_layout(q, pq)  # [b, h, Pq, Dh]
    k, v = (_to_kernel_layout(x, pk) for x in (k, v))  # [b, h, Pk, Dh]
    out = jax.vmap(kernel)(q, k, v)  # [b, h, Pq, Dh]
    return _from_kernel_layout(out, lq)

  return _shard_batch_and_heads(local, _scale(q), k, v)


def attend_splash_prefix(
    q: jax.Array,  # [B, Lq, H, Dh]
    k: jax.Array,  # [B, H, Lk, Dh] a KV cache layer, heads-major as the kernel takes it
    v: jax.Array,  # [B, H, Lk, Dh]
    kv_len: jax.Array,  # [] int: every query sees keys [0, kv_len)
) -> jax.Array:  # [B, Lq, H, Dh]
  """Attention of a chunk's queries to the filled part of a KV cache.

  `kv_len` is traced, so it cannot shape a static mask: keys are split into segments instead
  (0: visible, 1: not), which the kernel compares per element. Every tile is computed.
  """
  lq, lk = q.shape[1], k.shape[2]
  interpret = interpret_mode()
  tile_q, tile_kv = _tile(lq, interpret), _tile(lk, interpret)
  pq, pk = _padded(lq, tile_q), _padded(lk, tile_kv)
  segments = splash.SegmentIds(
      q=jnp.zeros((pq,), jnp.int32),  # [Pq]
      kv=(jnp.arange(pk) >= kv_len).astype(jnp.int32),  # [Pk]
  )

  def local(q, k, v, segments):  # one shard: q [b, Lq, h, Dh], k, v [b, h, Lk, Dh]
    kernel = _kernel(splash_mask.FullMask((pq, pk)), q.shape[2], tile_q, tile_kv, interpret)
    q = _to_kernel_layout(q, pq)  # [b, h, Pq, Dh]
    k, v = (jnp.pad(x, ((0, 0), (0, 0), (0, pk - lk), (0, 0))) for x in (k, v))  # [b, h, Pk, Dh]
    out = jax.vmap(kernel, in_axes=(0, 0, 0, None))(q, k, v, segments)  # [b, h, Pq, Dh]
    return _from_kernel_layout(out, lq)

  return _shard_batch_and_heads(local, _scale(q), k, v, segments, kv_heads_major=True)


def _scale(q: jax.Array) -> jax.Array:  # [B, L, H, Dh]
  """Splash does not scale the logits; scaling q in fp32 rounds once, in q's dtype."""
  return (q.astype(jnp.float32) * q.shape[-1] ** -0.5).astype(q.dtype)


def _to_kernel_layout(x: jax.Array, padded: int) -> jax.Array:
  """[b, L, h, Dh] -> [b, h, P, Dh], zero-padded along the sequence."""
  x = jnp.pad(x, ((0, 0), (0, padded - x.shape[1]), (0, 0), (0, 0)))  # [b, P, h, Dh]
  return x.transpose(0, 2, 1, 3)


def _from_kernel_layout(x: jax.Array, length: int) -> jax.Array:
  """[b, h, P, Dh] -> [b, L, h, Dh], pad rows dropped."""
  return x[:, :, :length].transpose(0, 2, 1, 3)


def _shard_batch_and_heads(fn, q, k, v, *replicated, kv_heads_major: bool = False):
  """Runs `fn(q, k, v, *replicated)` per device under an active mesh (batch over data and fsdp,
  heads over tensor; absent or size-1 axes are left out), or directly without one. q is
  [B, L, H, Dh]; k and v the same, or [B, H, L, Dh] with `kv_heads_major`.

  The kernel is a per-device Pallas call that GSPMD cannot partition, hence the shard_map.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn(q, k, v, *replicated)
  batch, heads = q.shape[0], q.shape[2]
  batch_axes = []
  for axis in _BATCH_AXES:  # keep an axis only while the batch still splits evenly
    size = mesh.shape.get(axis, 1)
    if size > 1 and batch % size == 0:
      batch_axes.append(axis)
      batch //= size
  head_size = mesh.shape.get(_HEAD_AXIS, 1)
  head_axis = _HEAD_AXIS if head_size > 1 and heads % head_size == 0 else None
  spec = P(tuple(batch_axes) or None, None, head_axis, None)
  kv_spec = P(tuple(batch_axes) or None, head_axis, None, None) if kv_heads_major else spec
  if mesh.are_all_axes_explicit:  # explicit meshes never reshard implicitly; auto ones do
    q, k, v = jax.reshard(q, spec), jax.reshard(k, kv_spec), jax.reshard(v, kv_spec)
  return jax.shard_map(
      fn, mesh=mesh, in_specs=(spec, kv_spec, kv_spec) + (P(),) * len(replicated), out_specs=spec,
      check_vma=False,  # the Pallas call declares no varying mesh axes for its outputs
  )(q, k, v, *replicated)
