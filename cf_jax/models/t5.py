"""The umT5 text encoder (encoder only) in Flax Linen.

Spec: architecture.md §5 (forward, relative positions, the wrapper's zeroed padding) and §8.4
(parameters). umT5 is T5 v1.1 with one relative-position bias table per layer instead of one
shared table, which is why HF's Flax T5 cannot be reused. T5 conventions kept here: attention
scores are not scaled by 1/sqrt(d), the norm is an RMS norm without mean or bias, the FFN is a
GELU-gated pair of projections, and no layer has a bias.

Blocks are scanned (`nn.scan`), parameters stacked `[layers, ...]`, every parameter carries
logical axis names (`cf_jax.parallel` maps them to mesh axes).
"""
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture hyper-parameters of a umT5 encoder (names as in Wan's `wan/modules/t5.py`)."""

  vocab_size: int
  dim: int
  dim_attn: int  # width of q, k, v (all heads together)
  dim_ffn: int
  num_heads: int
  num_layers: int
  num_buckets: int  # relative-position buckets, half per direction
  max_distance: int = 128  # distances from here on share the last bucket
  eps: float = 1e-6

  def __post_init__(self):
    if self.dim_attn % self.num_heads:
      raise ValueError(f"dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")
    if self.num_buckets % 4:
      raise ValueError(f"num_buckets {self.num_buckets} must be a multiple of 4 (two directions, "
                       "each half exact and half logarithmic)")

  @property
  def head_dim(self) -> int:
    return self.dim_attn // self.num_heads

  @classmethod
  def umt5_xxl(cls) -> "T5Config":
    """umT5-XXL encoder, Wan2.1's text encoder (5,680,910,336 params)."""
    return cls(vocab_size=256384, dim=4096, dim_attn=4096, dim_ffn=10240, num_heads=64, num_layers=24,
               num_buckets=32)

  @classmethod
  def tiny(cls) -> "T5Config":
    """The reference fixture's encoder (`tests/fixtures/umt5_tiny.pt`)."""
    return cls(vocab_size=256, dim=64, dim_attn=64, dim_ffn=160, num_heads=4, num_layers=2, num_buckets=32)


PRESETS = {"umt5_xxl": T5Config.umt5_xxl, "tiny": T5Config.tiny}


def param_count(cfg: T5Config) -> int:
  """Parameters of `UMT5Encoder(cfg)`: embedding, per-layer weights, final norm."""
  attn = 3 * cfg.dim * cfg.dim_attn + cfg.dim_attn * cfg.dim  # q, k, v, o
  ffn = 3 * cfg.dim * cfg.dim_ffn  # gate, fc1, fc2
  per_layer = attn + ffn + 2 * cfg.dim + cfg.num_buckets * cfg.num_heads  # + norm1, norm2, bias table
  return cfg.vocab_size * cfg.dim + cfg.num_layers * per_layer + cfg.dim


def relative_position_buckets(length_q: int, length_k: int, num_buckets: int, max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of `key − query` distances, `[Lq, Lk]` int32 (§5.3).

  Half of the buckets are for keys after the query. In each half, distances below a quarter of
  the buckets get their own bucket and longer ones share log-spaced buckets up to `max_distance`.
  Lengths are static, so this is a numpy constant: no log of 0 is ever traced (and no NaN can
  reach a gradient). Float64 here gives the same buckets as the reference's float32 for every
  distance (the only integer boundaries, powers of two, are exact in both).
  """
  rel = np.arange(length_k)[None, :] - np.arange(length_q)[:, None]  # [Lq, Lk]
  half = num_buckets // 2
  max_exact = half // 2
  n = np.abs(rel)
  with np.errstate(divide="ignore"):  # log(0) in the discarded branch of the where
    log_ratio = np.log(np.maximum(n, 1) / max_exact) / math.log(max_distance / max_exact)
  large = np.minimum(half - 1, max_exact + np.floor(log_ratio * (half - max_exact)).astype(np.int64))
  return ((rel > 0) * half + np.where(n < max_exact, n, large)).astype(np.int32)


def _param(names: tuple[str | None, ...], init=nn.initializers.lecun_normal()):
  return nn.with_logical_partitioning(init, names)


def _dense(features: int, names: tuple[str, str], module: Any, name: str):
  """A bias-free projection (no T5 layer has a bias)."""
  return nn.Dense(features, use_bias=False, dtype=module.dtype, param_dtype=module.param_dtype,
                  kernel_init=_param(names), name=name)


def _fp16_clamp(x):
  """The reference clamps float16 activations after each residual add, only when some are
  infinite, to keep them finite; other dtypes pass unchanged."""
  if x.dtype != jnp.float16:
    return x
  limit = float(jnp.finfo(jnp.float16).max) - 1000
  return jnp.where(jnp.isinf(x).any(), jnp.clip(x, -limit, limit), x)


class T5LayerNorm(nn.Module):
  """RMS norm without mean subtraction or bias: statistics in float32, then the learned scale."""

  eps: float
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):  # [B, L, D]
    scale = self.param("scale", _param(("embed",), nn.initializers.ones), (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return normed.astype(self.dtype) * scale.astype(self.dtype)


class RelativePositionBias(nn.Module):
  """One layer's learned bias per (head, bucket of key − query distance)."""

  config: T5Config
  param_dtype: Any

  @nn.compact
  def __call__(self, length: int):  # -> [H, L, L] float32
    cfg = self.config
    table = self.param(
        "embedding",
        _param(("relpos_buckets", "heads"), nn.initializers.normal(1.0)),
        (cfg.num_buckets, cfg.num_heads),
        self.param_dtype,
    )
    buckets = relative_position_buckets(length, length, cfg.num_buckets, cfg.max_distance)  # [L, L]
    return jnp.transpose(table.astype(jnp.float32)[buckets], (2, 0, 1))


class T5Attention(nn.Module):
  """Self-attention with unscaled scores, a relative-position bias and a key padding mask."""

  config: T5Config
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(
      self,
      x: jax.Array,  # [B, L, D]
      key_valid: jax.Array,  # [B, 1, 1, L] bool
      position_bias: jax.Array,  # [H, L, L] float32
  ):
    cfg = self.config
    b, length, _ = x.shape

    def heads(h):  # [B, L, Da] -> [B, L, H, Dh]
      return h.reshape(b, length, cfg.num_heads, cfg.head_dim)

    q = heads(_dense(cfg.dim_attn, ("embed", "heads"), self, "q")(x))
    k = heads(_dense(cfg.dim_attn, ("embed", "heads"), self, "k")(x))
    v = heads(_dense(cfg.dim_attn, ("embed", "heads"), self, "v")(x))
    # T5 folds the 1/sqrt(d) scale into the initialisation of q, so the scores are used as they are.
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)  # [B, H, L, L]
    scores = scores + position_bias[None]
    # Padded keys get the most negative float, as the reference's masked_fill. Padded queries are
    # computed like any other (their rows are zeroed at the end); a row with no valid key at all
    # becomes a uniform average instead of NaN.
    scores = jnp.where(key_valid, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)  # [B, L, H, Dh]
    return _dense(cfg.dim, ("heads", "embed"), self, "o")(out.reshape(b, length, cfg.dim_attn))


class T5FeedForward(nn.Module):
  """Gated GELU: fc2(fc1(x) · gelu_tanh(gate(x)))."""

  config: T5Config
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x):  # [B, L, D] -> [B, L, D]
    cfg = self.config
    gate = nn.gelu(_dense(cfg.dim_ffn, ("embed", "mlp"), self, "gate")(x), approximate=True)
    h = _dense(cfg.dim_ffn, ("embed", "mlp"), self, "fc1")(x) * gate  # [B, L, F]
    return _dense(cfg.dim, ("mlp", "embed"), self, "fc2")(h)


class T5Block(nn.Module):
  """Pre-norm residual attention then FFN; each layer owns its relative-position table."""

  config: T5Config
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x, key_valid):  # x [B, L, D], key_valid [B, 1, 1, L]
    cfg = self.config
    bias = RelativePositionBias(cfg, self.param_dtype, name="pos_embedding")(x.shape[1])  # [H, L, L]
    h = T5LayerNorm(cfg.eps, self.dtype, self.param_dtype, name="norm1")(x)
    x = _fp16_clamp(x + T5Attention(cfg, self.dtype, self.param_dtype, name="attn")(h, key_valid, bias))
    h = T5LayerNorm(cfg.eps, self.dtype, self.param_dtype, name="norm2")(x)
    x = _fp16_clamp(x + T5FeedForward(cfg, self.dtype, self.param_dtype, name="ffn")(h))
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed")), None


class UMT5Encoder(nn.Module):
  """umT5 encoder: token ids -> per-token embeddings `[B, L, dim]` in float32.

  Attributes:
    config: the architecture.
    dtype: compute dtype (norm statistics and softmax are float32 whatever it is).
    param_dtype: parameter dtype.
  """

  config: T5Config
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self,
      ids: jax.Array,  # [B, L] int token ids
      mask: jax.Array,  # [B, L] int, 1 for real tokens (EOS included), 0 for padding
      zero_padding: bool = True,
  ):
    """With `zero_padding` (the default), rows where `mask` is 0 are exactly 0, as the reference's
    `WanTextEncoder` returns them and the DiT expects; without it the raw encoder output (padded
    rows computed like the others, which the reference's `T5Encoder` returns)."""
    cfg = self.config
    if ids.ndim != 2 or ids.shape != mask.shape:
      raise ValueError(f"ids and mask must both be [B, L], got {ids.shape} and {mask.shape}")
    embed = nn.Embed(
        cfg.vocab_size,
        cfg.dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        embedding_init=_param(("vocab", "embed"), nn.initializers.normal(1.0)),
        name="token_embedding",
    )
    x = nn.with_logical_constraint(embed(ids), ("batch", "length", "act_embed"))  # [B, L, D], no scaling
    valid = mask > 0  # [B, L]
    blocks = nn.scan(
        T5Block,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=nn.broadcast,  # the padding mask is the same for every layer
        length=cfg.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = blocks(cfg, self.dtype, self.param_dtype, name="blocks")(x, valid[:, None, None, :])
    x = T5LayerNorm(cfg.eps, self.dtype, self.param_dtype, name="norm")(x).astype(jnp.float32)
    return jnp.where(valid[..., None], x, 0.0) if zero_padding else x
