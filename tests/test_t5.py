"""Parity of the Flax umT5 encoder with the PyTorch reference fixture (file g of the fixtures
README), the strict converter, the umT5-XXL size and the convert CLI for `--kind t5`.

Weights come through the real converter from `umt5_tiny.pt`.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from cf_jax import weights
from cf_jax.convert import safetensors_io
from cf_jax.convert import t5 as convert_t5
from cf_jax.convert import torch_pickle
from cf_jax.convert.errors import CheckpointError
from cf_jax.models import t5
from tests import torch_format
from tests.conftest import FIXTURES, load_fixture
from tests.test_cli import run

CFG = t5.T5Config.tiny()
ATOL = 1e-4


def max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.cache
def fixture():
  return load_fixture("umt5_tiny")


@functools.cache
def params():
  return convert_t5.load_t5_checkpoint(FIXTURES / "umt5_tiny.pt", CFG)


@pytest.mark.parametrize("case", ["L16", "L160"])
def test_encoder_matches_reference(case):
  f = fixture()
  model = t5.UMT5Encoder(CFG)
  raw = model.apply({"params": params()}, f[f"{case}_ids"], f[f"{case}_mask"], zero_padding=False)
  zeroed = model.apply({"params": params()}, f[f"{case}_ids"], f[f"{case}_mask"])
  assert raw.dtype == zeroed.dtype == jnp.float32
  assert raw.shape == zeroed.shape == f[f"{case}_encoder_out"].shape
  assert max_err(raw, f[f"{case}_encoder_out"]) < ATOL  # padded queries computed like the reference
  assert max_err(zeroed, f[f"{case}_prompt_embeds_padding_zeroed"]) < ATOL
  padding = f[f"{case}_mask"] == 0
  assert padding.any() and np.all(np.asarray(zeroed)[padding] == 0.0)


def test_bfloat16_compute_stays_close():
  f = fixture()
  out = t5.UMT5Encoder(CFG, dtype=jnp.bfloat16).apply({"params": params()}, f["L160_ids"], f["L160_mask"])
  assert out.dtype == jnp.float32
  assert max_err(out, f["L160_prompt_embeds_padding_zeroed"]) < 0.1


def test_relative_position_buckets():
  buckets = t5.relative_position_buckets(1, 400, 32, 128)[0]  # query 0, key distances 0..399
  assert list(buckets[:9]) == [0, 17, 18, 19, 20, 21, 22, 23, 24]  # exact for distances < 8
  assert buckets[16] == 26 and buckets[32] == 28 and buckets[64] == 30  # log-spaced: 8 + 2·log2(n/8)
  assert np.all(buckets[128:] == 31) and np.all(np.diff(buckets[1:]) >= 0)
  backwards = t5.relative_position_buckets(400, 1, 32, 128)[:, 0]  # keys before the query
  assert np.array_equal(backwards[1:], buckets[1:] - 16) and backwards[0] == 0


def test_umt5_xxl_parameter_count():
  cfg = t5.T5Config.umt5_xxl()
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda i: t5.UMT5Encoder(cfg).init(jax.random.key(0), i, i), ids)["params"]
  leaves = jax.tree.leaves(nn.unbox(shapes))
  assert sum(int(np.prod(leaf.shape)) for leaf in leaves) == t5.param_count(cfg) == 5_680_910_336
  assert len(convert_t5.expected_torch_shapes(cfg)) == 242
  # every parameter is named for sharding, layers included
  specs = jax.tree.leaves(nn.get_partition_spec(shapes), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(specs) == len(leaves) and all(None not in spec for spec in specs)


def _state_dict():
  return {k: np.asarray(v) for k, v in torch_pickle.load_torch_file(FIXTURES / "umt5_tiny.pt").items()}


def test_converter_stacks_layers_and_transposes_linears():
  sd = _state_dict()
  p = params()
  np.testing.assert_array_equal(p["blocks"]["attn"]["o"]["kernel"][1], sd["blocks.1.attn.o.weight"].T)
  np.testing.assert_array_equal(p["blocks"]["ffn"]["gate"]["kernel"][0], sd["blocks.0.ffn.gate.0.weight"].T)
  np.testing.assert_array_equal(p["blocks"]["pos_embedding"]["embedding"][1],
                                sd["blocks.1.pos_embedding.embedding.weight"])
  np.testing.assert_array_equal(p["token_embedding"]["embedding"], sd["token_embedding.weight"])


def test_converter_rejects_missing_extra_and_misshapen_keys(tmp_path):
  sd = _state_dict()
  del sd["blocks.1.ffn.fc1.weight"]
  sd["blocks.2.norm1.weight"] = np.ones(64, np.float32)
  sd["blocks.0.pos_embedding.embedding.weight"] = np.zeros((32, 8), np.float32)
  path = tmp_path / "bad.pth"
  torch_format.save_torch_file(sd, path)
  with pytest.raises(CheckpointError) as info:
    convert_t5.load_t5_checkpoint(path, CFG)
  message = str(info.value)
  assert str(path) in message and "\n" not in message
  assert "missing keys: blocks.1.ffn.fc1.weight" in message
  assert "unexpected keys: blocks.2.norm1.weight" in message
  assert "blocks.0.pos_embedding.embedding.weight (32, 8) != (32, 4)" in message


def test_converter_rejects_a_wrong_preset():
  with pytest.raises(CheckpointError, match=r"missing keys: blocks\.10\..*shape mismatches: blocks\.0\.attn\.k\.weight "
                     r"\(64, 64\) != \(4096, 4096\).*--model preset"):
    convert_t5.t5_params_from_torch(_state_dict(), t5.T5Config.umt5_xxl())


def test_loader_reads_safetensors_and_bfloat16_and_refuses_entries(tmp_path):
  sd = _state_dict()
  safetensors_io.save_safetensors(sd, tmp_path / "t5.safetensors")
  from_st = convert_t5.load_t5_checkpoint(tmp_path / "t5.safetensors", CFG)
  jax.tree.map(np.testing.assert_array_equal, from_st, params())
  torch_format.save_torch_file({k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}, tmp_path / "bf16.pth")
  upcast = convert_t5.load_t5_checkpoint(tmp_path / "bf16.pth", CFG)
  assert upcast["norm"]["scale"].dtype == np.float32
  assert max_err(upcast["norm"]["scale"], sd["norm.weight"]) < 1e-2
  with pytest.raises(CheckpointError, match="--entry"):
    convert_t5.load_t5_checkpoint(FIXTURES / "umt5_tiny.pt", CFG, entry="generator")
  with pytest.raises(CheckpointError, match=".pth/.pt"):
    convert_t5.load_t5_checkpoint(tmp_path / "t5.bin", CFG)


def test_convert_cli_round_trip_through_weights_load(tmp_path):
  out = tmp_path / "umt5_tiny"
  result = run("cf_jax.convert", "--kind", "t5", "--src", str(FIXTURES / "umt5_tiny.pt"), "--model", "tiny",
               "--out", str(out))
  assert result.returncode == 0, result.stderr
  assert f"umt5_encoder with {t5.param_count(CFG):,} parameters" in result.stdout
  cfg, loaded = weights.load("t5", out)
  assert cfg == CFG
  jax.tree.map(np.testing.assert_array_equal, loaded, params())
  assert weights.NETWORKS["t5"].preset("umt5_xxl") == t5.T5Config.umt5_xxl()

  no_preset = run("cf_jax.convert", "--kind", "t5", "--src", str(FIXTURES / "umt5_tiny.pt"),
                  "--out", str(tmp_path / "x"))
  assert no_preset.returncode != 0 and "--model" in no_preset.stderr
  wrong = run("cf_jax.convert", "--kind", "t5", "--src", str(FIXTURES / "umt5_tiny.pt"), "--model", "umt5_xxl",
              "--out", str(tmp_path / "y"))
  assert wrong.returncode != 0 and "shape mismatches" in wrong.stderr and "Traceback" not in wrong.stderr
  reverse = run("cf_jax.convert", "--kind", "t5", "--reverse", "--src", str(out), "--out", str(tmp_path / "z"))
  assert reverse.returncode != 0 and "not --kind t5" in reverse.stderr
  assert not any((tmp_path / n).exists() for n in "xyz")
