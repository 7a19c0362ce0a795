"""Torch-free reading of `.pt` files and of safetensors, including hostile and broken files."""
import json
import pickle

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from cf_jax.convert import safetensors_io
from cf_jax.convert import torch_pickle
from cf_jax.convert import wan as convert_wan
from cf_jax.convert.errors import CheckpointError
from cf_jax.models.config import WanConfig
from tests import torch_format
from tests.conftest import FIXTURES


def test_reference_checkpoints_read_and_agree_across_formats():
  pt = torch_pickle.load_torch_file(FIXTURES / "wan_tiny.pt")
  assert set(pt) == {"generator", "generator_ema"} and len(pt["generator"]) == 69
  st = safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")
  for name, value in st.items():  # the same weights W written by two different libraries
    np.testing.assert_array_equal(pt["generator"][f"model.{name}"], value)
  assert pt["generator"]["model.patch_embedding.weight"].shape == (128, 16, 1, 2, 2)
  vae = torch_pickle.load_torch_file(FIXTURES / "wanvae_tiny.pt")
  assert vae["encoder.conv1.weight"].shape == (8, 3, 3, 3, 3) and len(vae) == 194
  t5 = torch_pickle.load_torch_file(FIXTURES / "umt5_tiny.pt")
  assert t5["blocks.0.pos_embedding.embedding.weight"].shape == (32, 4)


def test_dtypes_strides_and_shared_storage_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  base = rng.standard_normal((4, 6)).astype(np.float32)
  shared = rng.standard_normal(20).astype(np.float16)
  obj = {
      "f32": base,
      "bf16": base.astype(ml_dtypes.bfloat16),
      "int64": np.arange(5, dtype=np.int64),
      "transposed": torch_format.Tensor(base.reshape(-1), 0, (6, 4), (1, 6)),  # non-contiguous view
      "nested": {"a": torch_format.Tensor(shared, 3, (2, 4), (4, 1)), "b": torch_format.Tensor(shared, 11, (9,), (1,))},
  }
  path = tmp_path / "x.pt"
  torch_format.save_torch_file(obj, path)
  out = torch_pickle.load_torch_file(path)
  np.testing.assert_array_equal(out["f32"], base)
  assert out["bf16"].dtype == ml_dtypes.bfloat16 and np.array_equal(out["bf16"], base.astype(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(out["int64"], np.arange(5))
  np.testing.assert_array_equal(out["transposed"], base.T)
  np.testing.assert_array_equal(out["nested"]["a"], shared[3:11].reshape(2, 4))
  np.testing.assert_array_equal(out["nested"]["b"], shared[11:])


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("subprocess", "call")])
def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, module, name):
  marker = tmp_path / "pwned"
  call = (pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.MARK
          + pickle.BINUNICODE + len(f"touch {marker}").to_bytes(4, "little") + f"touch {marker}".encode()
          + pickle.TUPLE + pickle.REDUCE)
  path = tmp_path / "evil.pt"
  torch_format.save_torch_file({"weight": np.zeros(2, np.float32), "payload": torch_format.Raw(call)}, path)
  with pytest.raises(CheckpointError, match=f"refusing to load '{module}.{name}'"):
    torch_pickle.load_torch_file(path)
  assert not marker.exists()


def test_truncated_and_garbage_files_raise_one_clear_error(tmp_path):
  data = (FIXTURES / "wan_tiny.pt").read_bytes()
  (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
  (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
  for name in ("half.pt", "garbage.pt", "missing.pt"):
    with pytest.raises(CheckpointError, match=name):
      torch_pickle.load_torch_file(tmp_path / name)


def test_a_storage_shorter_than_its_tensor_is_reported(tmp_path):
  path = tmp_path / "short.pt"
  torch_format.save_torch_file({"w": torch_format.Tensor(np.zeros(4, np.float32), 2, (4,), (1,))}, path)
  with pytest.raises(CheckpointError, match="overruns its storage"):
    torch_pickle.load_torch_file(path)


def test_training_checkpoint_prefixes_are_stripped(tmp_path):
  """FSDP and torch.compile wrappers leave `_fsdp_wrapped_module.` / `_orig_mod.` in EMA names."""
  cfg = WanConfig.tiny()
  weights = safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")
  wrapped = {f"model._fsdp_wrapped_module._orig_mod.{k}": v for k, v in weights.items()}
  path = tmp_path / "fsdp.pt"
  torch_format.save_torch_file({"generator_ema": wrapped}, path)
  params = convert_wan.load_params(path, cfg, entry="generator_ema")
  reference = convert_wan.params_from_torch(weights, cfg, "reference")
  np.testing.assert_array_equal(params["blocks"]["ffn_0"]["kernel"], reference["blocks"]["ffn_0"]["kernel"])
  with pytest.raises(CheckpointError, match="no entry 'critic'"):
    convert_wan.load_params(path, cfg, entry="critic")


def test_strict_key_check_names_the_offending_keys(tmp_path):
  cfg = WanConfig.tiny()
  weights = safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")
  broken = dict(weights)
  del broken["blocks.1.ffn.0.bias"]
  broken["blocks.0.extra.weight"] = np.zeros(3, np.float32)
  broken["head.head.weight"] = np.zeros((64, 64), np.float32)
  with pytest.raises(CheckpointError) as e:
    convert_wan.params_from_torch(broken, cfg, "broken.safetensors")
  message = str(e.value)
  assert "\n" not in message
  for part in ("missing keys: blocks.1.ffn.0.bias", "unexpected keys: blocks.0.extra.weight",
               "head.head.weight (64, 64) != (64, 128)"):
    assert part in message


def test_round_trip_convert_export_convert_is_identity():
  cfg = WanConfig.tiny()
  weights = safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")
  params = convert_wan.params_from_torch(weights, cfg, "w")
  exported = convert_wan.params_to_torch(params, cfg)
  assert exported.keys() == weights.keys()
  for name in weights:
    np.testing.assert_array_equal(exported[name], weights[name])
  again = convert_wan.params_from_torch(exported, cfg, "exported")
  assert jax.tree.structure(again) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(again)))


def test_sharded_safetensors_and_their_errors(tmp_path):
  weights = safetensors_io.load_safetensors(FIXTURES / "wan_tiny.safetensors")
  names = sorted(weights)
  shards = {"model-00001-of-00002.safetensors": names[:30], "model-00002-of-00002.safetensors": names[30:]}
  for shard, keys in shards.items():
    save_file({k: weights[k] for k in keys}, str(tmp_path / shard))
  index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
  index.write_text(json.dumps({"weight_map": {k: s for s, keys in shards.items() for k in keys}}))
  for source in (index, tmp_path):  # the index, or the directory holding it
    loaded = safetensors_io.load_safetensors(source)
    assert loaded.keys() == weights.keys()
    np.testing.assert_array_equal(loaded["head.head.weight"], weights["head.head.weight"])
  (tmp_path / "model-00002-of-00002.safetensors").unlink()
  with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors does not exist"):
    safetensors_io.load_safetensors(index)


def test_safetensors_bf16_round_trip_and_atomic_write(tmp_path):
  tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3).astype(ml_dtypes.bfloat16)}
  safetensors_io.save_safetensors(tensors, tmp_path / "x.safetensors")
  out = safetensors_io.load_safetensors(tmp_path / "x.safetensors")
  assert out["a"].dtype == ml_dtypes.bfloat16 and np.array_equal(out["a"], tensors["a"])
  with pytest.raises(Exception):
    safetensors_io.save_safetensors({"bad": "not an array"}, tmp_path / "y.safetensors")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x.safetensors"]  # nothing half-written
  (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
  with pytest.raises(CheckpointError, match="corrupt.safetensors"):
    safetensors_io.load_safetensors(tmp_path / "corrupt.safetensors")
