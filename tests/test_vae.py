"""Parity of the Flax Wan VAE with the PyTorch reference fixture (file h of the fixtures README).

Weights come through the real converter from `wanvae_tiny.pt`. Fixture videos are [B, C, T, H, W]
or [B, T, C, H, W] and latents [B, F, C, H, W]; the model is channels-last.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax.convert import vae as convert_vae
from cf_jax.convert.errors import CheckpointError
from cf_jax.models import vae
from tests.conftest import FIXTURES, load_fixture

CFG = vae.VAEConfig.tiny()
ATOL = 1e-4


def from_bcthw(a):  # [B, C, T, H, W] -> [B, T, H, W, C]
  return np.moveaxis(a, 1, -1)


def from_btchw(a):  # [B, T, C, H, W] -> [B, T, H, W, C]
  return np.moveaxis(a, 2, -1)


def max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.cache
def fixture():
  return load_fixture("wanvae_tiny")


@functools.cache
def params():
  return convert_vae.load_vae_checkpoint(FIXTURES / "wanvae_tiny.pt", CFG)


@functools.cache
def encoded():
  return vae.encode(params(), from_bcthw(fixture()["encode_input_video_BCTHW"]), CFG)  # [1, 3, 4, 4, 16]


def decode_input():
  return from_btchw(fixture()["decode_input_latent_BFCHW"])  # [1, 3, 4, 4, 16]


def test_latent_constants_match_reference():
  np.testing.assert_array_equal(vae.LATENT_MEAN, fixture()["latent_mean"])
  np.testing.assert_array_equal(vae.LATENT_STD, fixture()["latent_std"])


def test_encode_matches_reference():
  assert encoded().shape == (1, 3, 4, 4, 16)
  assert max_err(encoded(), from_btchw(fixture()["encode_output_latent_BFCHW"])) < ATOL


def test_decode_matches_reference():
  video = vae.decode(params(), decode_input(), CFG)
  raw = vae.decode(params(), decode_input(), CFG, clamp=False)
  assert video.shape == raw.shape == (1, 9, 32, 32, 3)
  assert max_err(video, from_btchw(fixture()["decode_output_video_BTCHW_clamped"])) < ATOL
  assert max_err(raw, from_bcthw(fixture()["decode_output_video_BCTHW_unclamped"])) < ATOL


def test_roundtrip_matches_reference():
  video = vae.decode(params(), encoded(), CFG)
  assert max_err(video, from_btchw(fixture()["roundtrip_decode_of_encoded_BTCHW"])) < ATOL


@pytest.mark.parametrize("blocks", [(1, 2), (1, 1, 1)])
def test_streaming_decode_equals_one_shot(blocks):
  latents = decode_input()
  state = vae.init_decode_state(CFG, 1, 4, 4)
  pieces, start = [], 0
  for n in blocks:
    state, frames = vae.decode_step(params(), state, latents[:, start:start + n])
    assert frames.shape[1] == (1 + 4 * (n - 1) if start == 0 else 4 * n)
    pieces.append(frames)
    start += n
  assert max_err(jnp.concatenate(pieces, axis=1), vae.decode(params(), latents, CFG)) < 1e-5


def test_encode_rejects_frame_counts_off_the_chunk_grid():
  with pytest.raises(ValueError, match="1 \\+ 4"):
    vae.encode(params(), jnp.zeros((1, 4, 32, 32, 3)), CFG)


def test_wan21_parameter_count():
  cfg = vae.VAEConfig.wan21()
  video = jax.ShapeDtypeStruct((1, 1, 16, 16, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: vae.WanVAE(cfg).init(jax.random.key(0), x), video)["params"]
  leaves = jax.tree.leaves(shapes)
  assert len(leaves) == len(convert_vae.expected_torch_shapes(cfg)) == 194
  assert sum(int(np.prod(leaf.shape)) for leaf in leaves) == 126_892_531


def _state_dict():
  return {k: np.zeros(s, np.float32) for k, s in convert_vae.expected_torch_shapes(CFG).items()}


def test_converter_rejects_missing_key():
  state_dict = _state_dict()
  del state_dict["decoder.upsamples.3.time_conv.weight"]
  with pytest.raises(CheckpointError, match="missing keys: decoder.upsamples.3.time_conv.weight"):
    convert_vae.vae_params_from_torch(state_dict, CFG)


def test_converter_rejects_wrong_shape():
  state_dict = _state_dict()
  state_dict["encoder.middle.1.norm.gamma"] = np.zeros((32, 1, 1, 1), np.float32)
  with pytest.raises(CheckpointError, match=r"encoder.middle.1.norm.gamma \(32, 1, 1, 1\) != \(32, 1, 1\)"):
    convert_vae.vae_params_from_torch(state_dict, CFG)
