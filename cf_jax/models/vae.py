"""The Wan2.1 video VAE in Flax Linen (spec: architecture.md §6, algorithms.md §2.3).

Time is processed in chunks, as in the reference: the encoder sees frame 0 alone and then groups
of 4 frames (one latent frame each); the decoder sees one latent frame at a time (1 pixel frame for
the first, 4 for each later one). Every causal convolution keeps the last frames of its input in
the `cache` variable collection, so chunked processing equals one long causal pass with zero
frames before frame 0. The caches have the same shapes after every chunk, so all chunks after the
first run under `jax.lax.scan`. The first chunk differs in shape and in one rule (the temporal
resampling convolutions are skipped), so it is a separate trace chosen by the static `is_first`.

Layout is channels-last: video `[B, T, H, W, 3]` in [-1, 1], latents `[B, F, H/8, W/8, 16]`
normalized with the per-channel mean/std the diffusion models were trained with.
"""
import dataclasses
import functools
from typing import Any, Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

# Per-channel statistics of Wan2.1 latents; diffusion runs on (mu - mean) / std.
LATENT_MEAN = np.array(
    [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921],
    np.float32,
)
LATENT_STD = np.array(
    [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160],
    np.float32,
)

# Frames of past input a k=3 causal convolution needs (the reference's CACHE_T).
_CONTEXT = 2

LayerKind = Literal["residual", "downsample2d", "downsample3d", "upsample2d", "upsample3d"]


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture of the Wan VAE. Names follow the reference's `_video_vae` arguments."""

  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple[bool, ...] = (False, True, True)

  def __post_init__(self):
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
          f"temperal_downsample {self.temperal_downsample} needs one entry per downsampling "
          f"stage ({len(self.dim_mult) - 1} for dim_mult {self.dim_mult})"
      )

  @property
  def spatial_factor(self) -> int:
    """Pixels per latent along H and W (8 for Wan2.1)."""
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    """Pixel frames per latent frame after the first (4 for Wan2.1)."""
    return 2 ** sum(self.temperal_downsample)

  @classmethod
  def wan21(cls) -> "VAEConfig":
    """`Wan2.1_VAE.pth` (126,892,531 params)."""
    return cls()

  @classmethod
  def tiny(cls) -> "VAEConfig":
    """The reference fixture `wanvae_tiny` (924,491 params)."""
    return cls(dim=8)


@dataclasses.dataclass(frozen=True)
class Layer:
  """One entry of the encoder's `downsamples` or the decoder's `upsamples` list."""

  kind: LayerKind
  dim_in: int
  dim_out: int


def encoder_layers(cfg: VAEConfig) -> list[Layer]:
  """The encoder's `downsamples`, in order: residual blocks, then a downsampling per stage."""
  dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
  layers = []
  for i, (dim_in, dim_out) in enumerate(zip(dims[:-1], dims[1:])):
    for _ in range(cfg.num_res_blocks):
      layers.append(Layer("residual", dim_in, dim_out))
      dim_in = dim_out
    if i < len(cfg.dim_mult) - 1:
      kind = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
      layers.append(Layer(kind, dim_out, dim_out))
  return layers


def decoder_layers(cfg: VAEConfig) -> list[Layer]:
  """The decoder's `upsamples`: one more residual block per stage; upsampling halves channels."""
  dims = [cfg.dim * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
  temperal_upsample = cfg.temperal_downsample[::-1]
  layers = []
  dim_in = dims[0]
  for i, dim_out in enumerate(dims[1:]):
    for _ in range(cfg.num_res_blocks + 1):
      layers.append(Layer("residual", dim_in, dim_out))
      dim_in = dim_out
    if i < len(cfg.dim_mult) - 1:
      kind = "upsample3d" if temperal_upsample[i] else "upsample2d"
      layers.append(Layer(kind, dim_out, dim_out // 2))
      dim_in = dim_out // 2
  return layers


def _conv3d_params(module: nn.Module, kernel_size: tuple[int, int, int], dim_in: int, dim_out: int):
  kernel = module.param("kernel", nn.initializers.lecun_normal(), (*kernel_size, dim_in, dim_out))  # [kt, kh, kw, I, O]
  bias = module.param("bias", nn.initializers.zeros, (dim_out,))  # [O]
  return kernel, bias


def _conv3d(x, kernel, bias, strides=(1, 1, 1)):
  """Valid in time, 'same' in space (odd spatial kernels)."""
  _, kh, kw, _, _ = kernel.shape
  padding = ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2))
  y = jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
  )
  return y + bias.astype(x.dtype)


def _prepend_cache(module: nn.Module, x: jax.Array, frames: int) -> jax.Array:
  """[cached past frames ; x]; the cache then keeps the last `frames` frames of that input."""
  b, _, h, w, c = x.shape
  cache = module.variable("cache", "frames", jnp.zeros, (b, frames, h, w, c), x.dtype)
  x = jnp.concatenate([cache.value, x], axis=1)  # [B, frames + T, H, W, C]
  cache.value = x[:, -frames:]
  return x


class CausalConv3d(nn.Module):
  """3D convolution that sees only present and past frames, across chunk boundaries.

  A temporal kernel of 3 is fed the last 2 input frames of the previous chunk (zeros before the
  first), which is the reference's 2-frame front padding; a kernel of 1 is pointwise.
  """

  features: int
  kernel_size: tuple[int, int, int] = (3, 3, 3)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C] -> [B, T, H, W, features]
    kernel, bias = _conv3d_params(self, self.kernel_size, x.shape[-1], self.features)
    if self.kernel_size[0] > 1:
      x = _prepend_cache(self, x, self.kernel_size[0] - 1)  # [B, kt - 1 + T, H, W, C]
    return _conv3d(x, kernel, bias)


class RMSNorm(nn.Module):
  """x / max(||x||, 1e-12) * sqrt(C) * gamma over channels: an RMS norm with no epsilon."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [..., C]
    c = x.shape[-1]
    gamma = self.param("gamma", nn.initializers.ones, (c,))  # [C]
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))  # [..., 1]
    return (x32 / jnp.maximum(norm, 1e-12) * c**0.5 * gamma).astype(x.dtype)


class ResidualBlock(nn.Module):
  """(RMS, SiLU, causal conv) twice, plus a pointwise shortcut when channels change."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C] -> [B, T, H, W, features]
    shortcut = x if x.shape[-1] == self.features else CausalConv3d(self.features, (1, 1, 1), name="shortcut")(x)
    y = CausalConv3d(self.features, name="conv1")(nn.silu(RMSNorm(name="norm1")(x)))
    y = CausalConv3d(self.features, name="conv2")(nn.silu(RMSNorm(name="norm2")(y)))
    return y + shortcut


class AttentionBlock(nn.Module):
  """Single-head self-attention over the pixels of each frame separately (no temporal mixing)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
    b, t, h, w, c = x.shape
    y = RMSNorm(name="norm")(x)
    qkv = nn.Conv(3 * c, (1, 1), dtype=x.dtype, name="to_qkv")(y)  # [B, T, H, W, 3C]
    q, k, v = jnp.split(qkv.reshape(b * t, h * w, 1, 3 * c), 3, axis=-1)  # 3 x [B·T, H·W, 1, C]
    y = jax.nn.dot_product_attention(q, k, v).reshape(b, t, h, w, c)
    proj = nn.Conv(c, (1, 1), kernel_init=nn.initializers.zeros, dtype=x.dtype, name="proj")
    return x + proj(y)


class TemporalDownsample(nn.Module):
  """Halves the frame count with a stride-2 (3, 1, 1) conv over [last frame of the previous chunk ; x].

  The first chunk (one frame) passes unchanged and only fills the cache.
  """

  @nn.compact
  def __call__(self, x: jax.Array, is_first: bool) -> jax.Array:  # [B, T, H, W, C] -> [B, T/2, H, W, C]
    c = x.shape[-1]
    kernel, bias = _conv3d_params(self, (3, 1, 1), c, c)
    x_ext = _prepend_cache(self, x, 1)  # [B, 1 + T, H, W, C]
    if is_first:
      return x
    return _conv3d(x_ext, kernel, bias, strides=(2, 1, 1))


class TemporalUpsample(nn.Module):
  """Doubles the frame count: a causal (3, 1, 1) conv to 2C channels, halves become even/odd frames.

  The first chunk passes unchanged and leaves the cache at zero, so the first latent's features
  never serve as temporal context (the reference's 'Rep' marker).
  """

  @nn.compact
  def __call__(self, x: jax.Array, is_first: bool) -> jax.Array:  # [B, T, H, W, C] -> [B, 2T, H, W, C]
    b, t, h, w, c = x.shape
    kernel, bias = _conv3d_params(self, (3, 1, 1), c, 2 * c)
    if is_first:
      self.variable("cache", "frames", jnp.zeros, (b, _CONTEXT, h, w, c), x.dtype)
      return x
    y = _conv3d(_prepend_cache(self, x, _CONTEXT), kernel, bias)  # [B, T, H, W, 2C]
    y = y.reshape(b, t, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5)  # [B, T, 2, H, W, C]
    return y.reshape(b, 2 * t, h, w, c)


class Resample(nn.Module):
  """2x spatial down/upsampling per frame, with temporal 2x resampling in the 3d modes."""

  kind: LayerKind

  @nn.compact
  def __call__(self, x: jax.Array, is_first: bool) -> jax.Array:  # [B, T, H, W, C]
    c = x.shape[-1]
    if self.kind == "upsample3d":
      x = TemporalUpsample(name="time_conv")(x, is_first)  # [B, 2T, H, W, C]
    if self.kind in ("upsample2d", "upsample3d"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # [B, T, 2H, 2W, C]
      return nn.Conv(c // 2, (3, 3), padding=((1, 1), (1, 1)), dtype=x.dtype, name="resample")(x)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))  # [B, T, H + 1, W + 1, C]
    x = nn.Conv(c, (3, 3), strides=(2, 2), padding="VALID", dtype=x.dtype, name="resample")(x)  # [B, T, H/2, W/2, C]
    if self.kind == "downsample3d":
      x = TemporalDownsample(name="time_conv")(x, is_first)
    return x


def _layer(layer: Layer, name: str, x: jax.Array, is_first: bool) -> jax.Array:
  if layer.kind == "residual":
    return ResidualBlock(layer.dim_out, name=name)(x)
  return Resample(layer.kind, name=name)(x, is_first)


def _middle(x: jax.Array) -> jax.Array:  # [B, T, H, W, C]
  c = x.shape[-1]
  x = ResidualBlock(c, name="middle_0")(x)
  x = AttentionBlock(name="middle_1")(x)
  return ResidualBlock(c, name="middle_2")(x)


def _head(x: jax.Array, features: int) -> jax.Array:  # [B, T, H, W, C] -> [B, T, H, W, features]
  return CausalConv3d(features, name="head_conv")(nn.silu(RMSNorm(name="head_norm")(x)))


class Encoder3d(nn.Module):
  """One chunk of video -> posterior statistics [mu ; log_var] of its latent frame."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array, is_first: bool) -> jax.Array:  # [B, T, H, W, 3] -> [B, T/4, H/8, W/8, 2·z]
    cfg = self.config
    x = CausalConv3d(cfg.dim, name="conv1")(x)
    for j, layer in enumerate(encoder_layers(cfg)):
      x = _layer(layer, f"downsamples_{j}", x, is_first)
    return _head(_middle(x), 2 * cfg.z_dim)


class Decoder3d(nn.Module):
  """One latent frame -> its pixel frames (1 for the first chunk, 4 after)."""

  config: VAEConfig

  @nn.compact
  def __call__(self, x: jax.Array, is_first: bool) -> jax.Array:  # [B, 1, h, w, z] -> [B, T, 8h, 8w, 3]
    cfg = self.config
    x = CausalConv3d(cfg.dim * cfg.dim_mult[-1], name="conv1")(x)
    x = _middle(x)
    for j, layer in enumerate(decoder_layers(cfg)):
      x = _layer(layer, f"upsamples_{j}", x, is_first)
    return _head(x, 3)


class WanVAE(nn.Module):
  """The whole VAE, one chunk per call; the functions below drive it over a video.

  `dtype` is the computation dtype; parameters are cast to it.
  """

  config: VAEConfig
  dtype: Any = jnp.float32

  def setup(self):
    z = self.config.z_dim
    self.encoder = Encoder3d(self.config)
    self.conv1 = CausalConv3d(2 * z, (1, 1, 1))
    self.conv2 = CausalConv3d(z, (1, 1, 1))
    self.decoder = Decoder3d(self.config)

  def encode_chunk(self, video: jax.Array, is_first: bool) -> jax.Array:  # [B, 1|4, H, W, 3] -> mu [B, 1, h, w, z]
    stats = self.conv1(self.encoder(video.astype(self.dtype), is_first))  # [B, 1, h, w, 2·z]
    return stats[..., : self.config.z_dim]

  def decode_chunk(self, z: jax.Array, is_first: bool) -> jax.Array:  # [B, 1, h, w, z] raw -> [B, 1|4, H, W, 3]
    return self.decoder(self.conv2(z.astype(self.dtype)), is_first)

  def __call__(self, video: jax.Array) -> jax.Array:  # [B, 1, H, W, 3]
    """Encodes and decodes one frame; used by `init`, it creates every parameter."""
    return self.decode_chunk(self.encode_chunk(video, True), True)


def normalize_latents(mu: jax.Array) -> jax.Array:  # [..., z]
  """Posterior mean -> the latent space the diffusion models work in."""
  return (mu - LATENT_MEAN.astype(mu.dtype)) * (1.0 / LATENT_STD).astype(mu.dtype)


def denormalize_latents(z: jax.Array) -> jax.Array:  # [..., z]
  return z / (1.0 / LATENT_STD).astype(z.dtype) + LATENT_MEAN.astype(z.dtype)


def _run_chunk(
    config: VAEConfig, dtype: Any, method: Any, params: dict, cache: Any | None, x: jax.Array, is_first: bool
) -> tuple[jax.Array, Any]:
  """One chunk through `method`; returns (output, updated cache). `cache=None` starts from zeros."""
  variables = {"params": params} if cache is None else {"params": params, "cache": cache}
  out, mutated = WanVAE(config, dtype).apply(variables, x, is_first, method=method, mutable=["cache"])
  return out, mutated["cache"]


def _check_spatial(config: VAEConfig, h: int, w: int, what: str) -> None:
  if h % config.spatial_factor or w % config.spatial_factor:
    raise ValueError(f"{what} {h}x{w} is not divisible by the VAE's spatial factor {config.spatial_factor}")


@functools.partial(jax.jit, static_argnames="config")
def encode(params: dict, video: jax.Array, config: VAEConfig) -> jax.Array:
  """Video in [-1, 1] -> normalized latents (posterior mean, no sampling).

  Args:
    params: `WanVAE` parameters.
    video: `[B, T, H, W, 3]` with T = 1 + 4k and H, W multiples of 8; its dtype is the compute dtype.
    config: the architecture.

  Returns:
    `[B, 1 + k, H/8, W/8, z_dim]`.
  """
  b, t, h, w, _ = video.shape
  k = config.temporal_factor
  if (t - 1) % k:
    raise ValueError(f"the video has {t} frames; the encoder needs 1 + {k}·n")
  _check_spatial(config, h, w, "video size")
  run = functools.partial(_run_chunk, config, video.dtype, WanVAE.encode_chunk, params)
  mu, cache = run(None, video[:, :1], True)  # [B, 1, h, w, z]
  if t > 1:
    groups = jnp.moveaxis(video[:, 1:].reshape(b, (t - 1) // k, k, h, w, 3), 1, 0)  # [n, B, 4, H, W, 3]

    def step(cache, chunk):  # chunk [B, 4, H, W, 3]
      mu, cache = run(cache, chunk, False)  # [B, 1, h, w, z]
      return cache, mu[:, 0]

    _, rest = jax.lax.scan(step, cache, groups)  # [n, B, h, w, z]
    mu = jnp.concatenate([mu, jnp.moveaxis(rest, 0, 1)], axis=1)  # [B, 1 + n, h, w, z]
  return normalize_latents(mu)


@flax.struct.dataclass
class DecodeState:
  """Where a streaming decode stands: the decoder's causal caches, fixed in shape for a video."""

  cache: Any  # the `cache` collection of `Decoder3d`: [B, 1|2, h', w', C'] per causal conv
  config: VAEConfig = flax.struct.field(pytree_node=False)
  dtype: Any = flax.struct.field(pytree_node=False)
  is_first: bool = flax.struct.field(pytree_node=False)


@functools.lru_cache(maxsize=16)
def _decode_cache_shapes(config: VAEConfig, batch: int, height: int, width: int, dtype) -> Any:
  z = jax.ShapeDtypeStruct((batch, 1, height, width, config.z_dim), dtype)
  model = WanVAE(config, dtype)
  variables = jax.eval_shape(lambda z: model.init(jax.random.key(0), z, True, method=WanVAE.decode_chunk), z)
  return variables["cache"]


def init_decode_state(
    config: VAEConfig, batch: int, latent_height: int, latent_width: int, dtype=jnp.float32
) -> DecodeState:
  """Zero caches for decoding a new video of `[batch, F, latent_height, latent_width, z]` latents.

  `dtype` is the compute dtype of the decode (and of the caches).
  """
  dtype = jnp.dtype(dtype)
  shapes = _decode_cache_shapes(config, batch, latent_height, latent_width, dtype)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  return DecodeState(cache, config, dtype, True)


@jax.jit
def _decode_step_unclamped(params: dict, state: DecodeState, latents: jax.Array):
  b, n, h, w, _ = latents.shape  # latents [B, n, h, w, z], normalized
  config = state.config
  run = functools.partial(_run_chunk, config, state.dtype, WanVAE.decode_chunk, params)
  z = denormalize_latents(latents.astype(state.dtype))  # [B, n, h, w, z]
  cache, pieces = state.cache, []
  if state.is_first:
    first, cache = run(cache, z[:, :1], True)  # [B, 1, H, W, 3]
    pieces.append(first)
    z = z[:, 1:]
  if z.shape[1]:

    def step(cache, z_frame):  # z_frame [B, h, w, z]
      frames, cache = run(cache, z_frame[:, None], False)  # [B, 4, H, W, 3]
      return cache, frames

    cache, frames = jax.lax.scan(step, cache, jnp.moveaxis(z, 1, 0))  # [m, B, 4, H, W, 3]
    s = config.spatial_factor
    pieces.append(jnp.moveaxis(frames, 0, 1).reshape(b, -1, h * s, w * s, 3))  # [B, 4m, H, W, 3]
  return DecodeState(cache, config, state.dtype, False), jnp.concatenate(pieces, axis=1)


def decode_step(params: dict, state: DecodeState, latent_block: jax.Array) -> tuple[DecodeState, jax.Array]:
  """Decodes the next `n` latent frames of a video, continuing from `state`.

  Lets a sampler turn each generated block into pixels at once; decoding a video block by block
  gives the same frames as `decode` of the whole video.

  Args:
    params: `WanVAE` parameters.
    state: from `init_decode_state` (first call) or the previous `decode_step`.
    latent_block: `[B, n, h, w, z]` normalized latents.

  Returns:
    The new state and frames `[B, T, 8h, 8w, 3]` clamped to [-1, 1], T = 1 + 4(n - 1) on the first
    call of a video and 4n after.
  """
  state, frames = _decode_step_unclamped(params, state, latent_block)
  return state, jnp.clip(frames, -1.0, 1.0)


def decode(params: dict, latents: jax.Array, config: VAEConfig, clamp: bool = True) -> jax.Array:
  """Normalized latents `[B, F, h, w, z]` -> video `[B, 1 + 4(F - 1), 8h, 8w, 3]`.

  The compute dtype is the latents' dtype. `clamp=False` returns the decoder's raw output.
  """
  b, _, h, w, _ = latents.shape
  state = init_decode_state(config, b, h, w, latents.dtype)
  _, video = _decode_step_unclamped(params, state, latents)
  return jnp.clip(video, -1.0, 1.0) if clamp else video
