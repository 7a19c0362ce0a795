"""The Wan2.1 DiT in Flax Linen: one module family for the bidirectional and the causal model.

Spec: architecture.md §2 (WanModel) and §3 (CausalWanModel). Both reference classes share their
parameters; they differ only in the timestep layout and the attention mask. Here timesteps are
always per frame `[B, F]` (a bidirectional call repeats one value per sample, which gives the
reference's modulation exactly) and the mask is chosen by `Layout`:

    bidirectional    full attention                         (WanModel: teacher, real/fake score)
    block_causal     block-causal over frames               (CausalWanModel, diffusion forcing)
    + clean_x        teacher forcing: [clean ; noisy] tokens (CausalWanModel, stage 1/2 training)

Latents are channels-last `[B, F, H, W, C]`. Blocks are scanned (`nn.scan`), parameters stacked
`[layers, ...]`, every parameter and the main activations carry logical axis names.
"""
import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from cf_jax.models import attention
from cf_jax.models import embeddings
from cf_jax.models import masks
from cf_jax.models.config import WanConfig
from cf_jax.models.kv_cache import KVCache

RematPolicy = Literal["none", "full", "dots", "dots_no_batch"]
_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which attention pattern a forward uses (static)."""

  causal: bool = False
  frames_per_block: int = 1  # K: 1 frame-wise, 3 chunk-wise
  local_attn_frames: int = -1

  @classmethod
  def bidirectional(cls) -> "Layout":
    return cls()

  @classmethod
  def block_causal(cls, frames_per_block: int, local_attn_frames: int = -1) -> "Layout":
    return cls(True, frames_per_block, local_attn_frames)

  def mask(self, num_frames: int, tokens_per_frame: int, teacher_forcing: bool):
    if not self.causal:
      if teacher_forcing:
        raise ValueError("teacher forcing (clean_x) needs a block-causal layout")
      return None
    if teacher_forcing:
      # As in the reference, the teacher-forcing mask has no local window: a model trained with
      # the full history may still be sampled with a rolling window.
      return masks.BlockMask("teacher_forcing", num_frames, tokens_per_frame, self.frames_per_block)
    return masks.BlockMask(
        "block_causal", num_frames, tokens_per_frame, self.frames_per_block, self.local_attn_frames
    )


def _param(names: tuple[str | None, ...], init=nn.initializers.lecun_normal()):
  return nn.with_logical_partitioning(init, names)


def _dense(features: int, names: tuple[str | None, str | None], module: "Any", name: str | None = None):
  return nn.Dense(
      features,
      dtype=module.dtype,
      param_dtype=module.param_dtype,
      kernel_init=_param(names),
      bias_init=_param((names[1],), nn.initializers.zeros),
      name=name,
  )


class RMSNorm(nn.Module):
  """x · rsqrt(mean(x²) + eps) with float32 statistics, cast back, then a learned scale."""

  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _param(("heads",), nn.initializers.ones), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)).astype(x.dtype)
    return normed * scale.astype(x.dtype)


def layer_norm(x, eps: float):
  """Non-affine LayerNorm over the last axis, float32 statistics, output in x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


class AffineLayerNorm(nn.Module):
  """LayerNorm with weight and bias (`norm3`, before cross-attention)."""

  eps: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dim = x.shape[-1]
    scale = self.param("scale", _param(("embed",), nn.initializers.ones), (dim,), self.param_dtype)
    bias = self.param("bias", _param(("embed",), nn.initializers.zeros), (dim,), self.param_dtype)
    return layer_norm(x, self.eps) * scale.astype(x.dtype) + bias.astype(x.dtype)


class Attention(nn.Module):
  """Projections of multi-head attention with qk RMSNorm over all heads (§2.8).

  Split into methods so the caller decides where keys/values come from: the same tokens, the
  text, a KV cache, or a per-prompt cross-attention cache.
  """

  config: WanConfig
  dtype: Any
  param_dtype: Any

  def setup(self):
    cfg = self.config
    self.q = _dense(cfg.dim, ("embed", "heads"), self)
    self.k = _dense(cfg.dim, ("embed", "heads"), self)
    self.v = _dense(cfg.dim, ("embed", "heads"), self)
    self.o = _dense(cfg.dim, ("heads", "embed"), self)
    if cfg.qk_norm:
      self.norm_q = RMSNorm(cfg.eps, self.param_dtype)
      self.norm_k = RMSNorm(cfg.eps, self.param_dtype)

  def _heads(self, x):  # [B, L, D] -> [B, L, H, Dh]
    return x.reshape(*x.shape[:2], self.config.num_heads, self.config.head_dim)

  def project_q(self, x):  # [B, Lq, D] -> [B, Lq, H, Dh]
    q = self.q(x)
    return self._heads(self.norm_q(q) if self.config.qk_norm else q)

  def project_kv(self, x):  # [B, Lk, D] -> 2 × [B, Lk, H, Dh]
    k = self.k(x)
    return self._heads(self.norm_k(k) if self.config.qk_norm else k), self._heads(self.v(x))

  def project_out(self, out):  # [B, Lq, H, Dh] -> [B, Lq, D]
    return self.o(out.reshape(*out.shape[:2], self.config.dim))


class WanBlock(nn.Module):
  """One DiT block: modulated self-attention, cross-attention to text, modulated FFN (§2.7).

  With `cache` (one layer's slice of a `KVCache`), the block's queries attend to the first
  `cache_len` cached rows, its own keys/values in place at `cache_rows`; the cross-attention reads
  the cached text keys/values. It then also returns the block's keys/values (k, v), for the caller
  to write into the cache once after the layer scan.
  """

  config: WanConfig
  dtype: Any
  param_dtype: Any
  backend: attention.Backend
  mask: masks.BlockMask | None
  # Leading tokens whose keys/values carry no gradient (teacher forcing with `detach_clean`).
  detached_tokens: int = 0

  @nn.compact
  def __call__(
      self,
      x: jax.Array,  # [B, F·S, D]
      e0: jax.Array,  # [B, F, 6, D] per-frame time modulation ([B, 1, 6, D]: one for all tokens)
      context: jax.Array | None,  # [B, Lt, D] embedded text (None with a cache)
      rope: tuple[jax.Array, jax.Array],  # 2 × [F·S, Dh/2]
      cache: dict[str, jax.Array] | None = None,  # k, v [B, H, C·S, Dh]; cross_k, cross_v [B, H, Lt, Dh]
      cache_rows: jax.Array | None = None,  # [F·S] int32
      cache_len: jax.Array | None = None,  # [] int32
  ):
    cfg = self.config
    modulation = self.param(
        "modulation",
        _param((None, "embed"), nn.initializers.normal(cfg.dim**-0.5)),
        (6, cfg.dim),
        self.param_dtype,
    )
    m = (modulation.astype(self.dtype) + e0)[:, :, :, None, :]  # [B, F, 6, 1, D]
    shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (m[:, :, i] for i in range(6))
    b, f = e0.shape[:2]

    def per_frame(h):  # [B, F·S, D] -> [B, F, S, D] (F = 1: the whole sequence)
      return h.reshape(b, f, -1, cfg.dim)

    def flat(h):
      return h.reshape(b, -1, cfg.dim)

    self_attn = Attention(cfg, self.dtype, self.param_dtype, name="self_attn")
    a = flat(per_frame(layer_norm(x, cfg.eps)) * (1 + scale_sa) + shift_sa)
    q = embeddings.apply_rope(self_attn.project_q(a), *rope)  # [B, F·S, H, Dh]
    k, v = self_attn.project_kv(a)
    k = embeddings.apply_rope(k, *rope)
    if self.detached_tokens:
      k, v = (_detach_prefix(a, self.detached_tokens) for a in (k, v))
    if cache is None:
      y = attention.attend(q, k, v, self.mask, self.backend)
      new_kv = None
    else:
      new_kv = (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))  # 2 × [B, H, F·S, Dh], heads-major as the cache
      # One layer's copy with the block's rows: the stacked cache itself is never re-stacked.
      layer_kv = (cache[name].at[:, :, cache_rows].set(x) for name, x in zip(("k", "v"), new_kv))
      y = attention.attend_prefix(q, *layer_kv, cache_len, self.backend)
    x = x + flat(per_frame(self_attn.project_out(y)) * gate_sa)

    cross_attn = Attention(cfg, self.dtype, self.param_dtype, name="cross_attn")
    c = AffineLayerNorm(cfg.eps, self.param_dtype, name="norm3")(x) if cfg.cross_attn_norm else x
    q_text = cross_attn.project_q(c)
    if cache is None:
      y = attention.attend(q_text, *cross_attn.project_kv(context), None, self.backend)
    else:  # the prompt's cached keys/values, heads-major like the self-attention cache: all of them visible
      y = attention.attend_prefix(q_text, cache["cross_k"], cache["cross_v"], cache["cross_k"].shape[2], self.backend)
    x = x + cross_attn.project_out(y)

    h = flat(per_frame(layer_norm(x, cfg.eps)) * (1 + scale_ff) + shift_ff)
    h = _dense(cfg.ffn_dim, ("embed", "mlp"), self, "ffn_0")(h)
    h = nn.gelu(h, approximate=True)
    h = _dense(cfg.dim, ("mlp", "embed"), self, "ffn_1")(h)
    x = x + flat(per_frame(h) * gate_ff)
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), new_kv


class TextEmbedding(nn.Module):
  """Text MLP: Linear(text_dim → D), GELU-tanh, Linear(D → D), over all text_len rows."""

  config: WanConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, context):  # [B, Lt ≤ text_len, text_dim] -> [B, text_len, D]
    cfg = self.config
    # Rows past the prompt are zero (as the text encoder pads) and still attended, like the reference.
    context = jnp.pad(context, ((0, 0), (0, cfg.text_len - context.shape[1]), (0, 0)))
    c = _dense(cfg.dim, ("text_embed", "embed"), self, "fc1")(context.astype(self.dtype))
    c = _dense(cfg.dim, ("embed", "embed_out"), self, "fc2")(nn.gelu(c, approximate=True))
    return nn.with_logical_constraint(c, ("batch", "text_length", "act_embed"))


class _CrossKV(nn.Module):
  """One layer's cross-attention keys/values; scanned under the name `blocks` so it reads the
  `blocks/cross_attn` parameters of a `WanModel`."""

  config: WanConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, context, _):
    k, v = Attention(self.config, self.dtype, self.param_dtype, name="cross_attn").project_kv(context)
    return context, (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))  # 2 × [B, H, text_len, Dh]


class WanTextCache(nn.Module):
  """Cross-attention keys/values of every layer for one prompt: `[L, B, H, text_len, Dh]` × 2
  (heads-major, as the blocks read them every call).

  Applied with a `WanModel`'s params (it uses the text MLP and the cross-attention k/v/norm_k
  weights), once per prompt, to fill `KVCache.cross_k/cross_v`.
  """

  config: WanConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, context):  # [B, Lt, text_dim]
    context = TextEmbedding(self.config, self.dtype, self.param_dtype, name="text_embedding")(context)
    scanned = nn.scan(
        _CrossKV,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        length=self.config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(self.config, self.dtype, self.param_dtype, name="blocks")(context, None)[1]


class WanModel(nn.Module):
  """Wan2.1 DiT. Output: the flow (velocity ≈ noise − x0) prediction, same shape as `x`.

  Attributes:
    config: the architecture.
    dtype: compute dtype (bfloat16 for training and sampling at scale).
    param_dtype: parameter dtype (float32 master weights).
    remat_policy: activation checkpointing of each block: 'none', 'full', 'dots' or
      'dots_no_batch' (save matmul outputs without batch dims; the default, since recomputing
      the elementwise ops and the attention is cheaper than keeping them: on the CPU perf
      anchor's training step it keeps 0.50 GB between the passes instead of 1.20 GB, and runs
      no slower). Stage configs set their own.
    attention_backend: 'auto' (the platform's: blocksparse on CPU, splash on TPU, cudnn on GPU
      in half precision), 'blocksparse', 'xla', 'splash' or 'cudnn' (see `cf_jax.models.attention`).
  """

  config: WanConfig
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat_policy: RematPolicy = "dots_no_batch"
  attention_backend: attention.Backend = "auto"

  @nn.compact
  def __call__(
      self,
      x: jax.Array,  # [B, F, H, W, C_in] noisy latents (with a cache: the current block)
      t: jax.Array,  # [B, F] timestep of each latent frame (0..1000 scale), or [B]
      context: jax.Array | None,  # [B, Lt ≤ text_len, text_dim] text embeddings (None with a cache)
      layout: Layout = Layout(),
      clean_x: jax.Array | None = None,  # [B, F, H, W, C_in] teacher-forcing context
      aug_t: jax.Array | None = None,  # [B, F] timestep of the clean context (default 0)
      kv_cache: KVCache | None = None,
      start_frame: jax.Array | int = 0,  # with a cache: absolute index of the block's first frame
      detach_clean: bool = False,
  ):
    """Returns the flow `[B, F, H, W, C_out]`; with `kv_cache`, `(flow, updated cache)`.

    With a cache, `x` is one block of frames starting at `start_frame`: its keys/values are
    written into the cache and it attends to every cached frame before it plus itself (the
    layout is implied by the cache). `start_frame` may be traced, so one compiled call serves
    every block of a video.
    """
    cfg = self.config
    b, f, height, width, _ = x.shape
    # One timestep per sample (the bidirectional networks): the time modulation is computed for
    # one row and broadcast over the whole sequence, not viewed as F frames of S tokens. Same
    # numbers; at S = 1560 and 9+ frames that per-frame view makes libtpu's compiler abort
    # (CollapsedBoundIsAdmissible; the reproducer is in tests/test_tpu_compile.py).
    per_sample_t = t.ndim == 1 and clean_x is None and kv_cache is None
    t = jnp.broadcast_to(t[:, None], (b, f)) if t.ndim == 1 else t
    _check_shapes(cfg, x, t, context, clean_x, kv_cache)
    if detach_clean and clean_x is None:
      raise ValueError("detach_clean needs teacher forcing (clean_x)")
    _, ph, pw = cfg.patch_size
    h, w = height // ph, width // pw
    s = cfg.tokens_per_frame(height, width)

    frame_positions = start_frame + jnp.arange(f)
    if clean_x is not None:
      # Teacher forcing: [clean ; noisy] frames, the clean half modulated by aug_t (default 0)
      # and given the same RoPE positions as the noisy half.
      aug_t = jnp.zeros_like(t) if aug_t is None else aug_t
      x, t = jnp.concatenate([clean_x, x], axis=1), jnp.concatenate([aug_t, t], axis=1)
      frame_positions = jnp.concatenate([frame_positions, frame_positions])
    tokens = _dense(cfg.dim, ("patch", "embed"), self, "patch_embedding")(_patchify(x, cfg))  # [B, F'·S, D]
    tokens = nn.with_logical_constraint(tokens.astype(self.dtype), ("batch", "length", "act_embed"))
    e = self._time_embedding(t[:, :1] if per_sample_t else t)  # [B, F' (1: per sample), D]
    e0 = self._time_projection(e)  # [B, F' (1: per sample), 6, D]
    rope = embeddings.rope_cos_sin(frame_positions, h, w, cfg.head_dim)

    if kv_cache is None:
      context = TextEmbedding(cfg, self.dtype, self.param_dtype, name="text_embedding")(context)
      mask = layout.mask(f, s, teacher_forcing=clean_x is not None)
      detached = f * s if detach_clean else 0
      tokens = self._blocks(mask, cached=False, detached_tokens=detached)(tokens, e0, context, rope)[0]
    else:
      layers = {"k": kv_cache.k, "v": kv_cache.v, "cross_k": kv_cache.cross_k, "cross_v": kv_cache.cross_v}
      rows = kv_cache.slot_rows(start_frame, f)
      tokens, (new_k, new_v) = self._blocks(None, cached=True)(
          tokens, e0, None, rope, layers, rows, kv_cache.valid_length(start_frame, f)
      )  # new_k, new_v [L, B, H, F·S, Dh]: the block's rows only
      kv_cache = kv_cache.write(rows, new_k, new_v)
    # Teacher forcing: only the noisy half goes through the head.
    flow = _unpatchify(self._head(tokens[:, -f * s :], e[:, -f:]), cfg, f, h, w)
    return flow if kv_cache is None else (flow, kv_cache)

  def _time_embedding(self, t):  # [B, F] -> [B, F, D]
    cfg = self.config
    sinusoid = embeddings.timestep_embedding(t, cfg.freq_dim).astype(self.dtype)
    e = _dense(cfg.dim, ("freq", "embed"), self, "time_embedding_0")(sinusoid)
    return _dense(cfg.dim, ("embed", "embed_out"), self, "time_embedding_1")(nn.silu(e))

  def _time_projection(self, e):  # [B, F, D] -> [B, F, 6, D]
    cfg = self.config
    e0 = _dense(6 * cfg.dim, ("embed", "modulation"), self, "time_projection")(nn.silu(e))
    return e0.reshape(*e.shape[:2], 6, cfg.dim)

  def _blocks(self, mask, cached: bool, detached_tokens: int = 0):
    block = WanBlock
    if self.remat_policy != "none":
      if self.remat_policy not in _REMAT_POLICIES:
        raise ValueError(f"unknown remat_policy {self.remat_policy!r}; choose none or {list(_REMAT_POLICIES)}")
      block = nn.remat(block, policy=_REMAT_POLICIES[self.remat_policy], prevent_cse=False)
    scanned = nn.scan(
        block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        # x is the carry; modulation, text and RoPE are shared by all layers; a cache is read
        # per layer and only the block's new keys/values come back stacked, so the scan never
        # materializes a second cache (the caller scatters the new rows in place).
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast) + ((0, nn.broadcast, nn.broadcast) if cached else ()),
        length=self.config.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scanned(
        self.config, self.dtype, self.param_dtype, self.attention_backend, mask, detached_tokens, name="blocks"
    )

  def _head(self, x, e):  # x [B, F·S, D], e [B, F or 1, D] -> [B, F or 1, ·, pt·ph·pw·C_out]
    cfg = self.config
    modulation = self.param(
        "head_modulation",
        _param((None, "embed"), nn.initializers.normal(cfg.dim**-0.5)),
        (2, cfg.dim),
        self.param_dtype,
    )
    m = modulation.astype(self.dtype)[None, None] + e[:, :, None, :]  # [B, F, 2, D]
    shift, scale = m[:, :, 0:1], m[:, :, 1:2]  # [B, F, 1, D]
    b, f = e.shape[:2]
    x = layer_norm(x, cfg.eps).reshape(b, f, -1, cfg.dim) * (1 + scale) + shift
    pt, ph, pw = cfg.patch_size
    return _dense(pt * ph * pw * cfg.out_dim, ("embed", "patch_out"), self, "head")(x)


def _detach_prefix(a, n: int):  # [B, L, H, Dh]: the first n rows without gradient
  return jnp.concatenate([jax.lax.stop_gradient(a[:, :n]), a[:, n:]], axis=1)


def _check_shapes(cfg: WanConfig, x, t, context, clean_x, kv_cache):
  if x.ndim != 5 or x.shape[-1] != cfg.in_dim:
    raise ValueError(f"latents must be [B, F, H, W, {cfg.in_dim}], got {x.shape}")
  if t.shape != x.shape[:2]:
    raise ValueError(f"timesteps must be [B, F] = {x.shape[:2]}, got {t.shape}")
  if kv_cache is not None:
    if clean_x is not None:
      raise ValueError("teacher forcing (clean_x) and a KV cache are exclusive")
    if kv_cache.tokens_per_frame != cfg.tokens_per_frame(*x.shape[2:4]):
      raise ValueError(f"the KV cache holds {kv_cache.tokens_per_frame} tokens per frame, the latents give "
                       f"{cfg.tokens_per_frame(*x.shape[2:4])}; build the cache for this resolution")
    return
  if context is None:
    raise ValueError("text embeddings are required without a KV cache")
  if context.ndim != 3 or context.shape[-1] != cfg.text_dim or context.shape[1] > cfg.text_len:
    raise ValueError(
        f"text embeddings must be [B, ≤{cfg.text_len}, {cfg.text_dim}], got {context.shape}"
    )
  if clean_x is not None and clean_x.shape != x.shape:
    raise ValueError(f"clean_x {clean_x.shape} must match the noisy latents {x.shape}")


def _patchify(x, cfg: WanConfig):
  """[B, F, H, W, C] -> [B, F·h·w, C·pt·ph·pw], each patch flattened channel-slowest like the
  reference's Conv3d weight [D, C, pt, ph, pw]."""
  b, f, height, width, c = x.shape
  _, ph, pw = cfg.patch_size
  x = x.reshape(b, f, height // ph, ph, width // pw, pw, c)
  x = x.transpose(0, 1, 2, 4, 6, 3, 5)  # [B, F, h, w, C, ph, pw]
  return x.reshape(b, -1, c * ph * pw)


def _unpatchify(x, cfg: WanConfig, f: int, h: int, w: int):
  """[B, F, h·w, ph·pw·C] (channel-fastest, as the reference head) -> [B, F, H, W, C]."""
  _, ph, pw = cfg.patch_size
  b = x.shape[0]
  x = x.reshape(b, f, h, w, ph, pw, cfg.out_dim).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, f, h * ph, w * pw, cfg.out_dim)
