"""Sharding on the fake 8-device CPU mesh: parameter placement by logical-axis rules, and a sharded
forward equal to the unsharded one."""
import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cf_jax import checkpoint, parallel, weights
from cf_jax.convert import wan as convert_wan
from cf_jax.models import wan
from cf_jax.models.config import WanConfig
from tests.conftest import FIXTURES, load_fixture


def abstract_params(cfg: WanConfig):
  """Boxed (logically annotated) parameter shapes of a model; nothing is allocated."""
  model = wan.WanModel(cfg)
  x = jax.ShapeDtypeStruct((1, 1, 60, 104, cfg.in_dim), jnp.float32)
  t = jax.ShapeDtypeStruct((1, 1), jnp.float32)
  context = jax.ShapeDtypeStruct((1, cfg.text_len, cfg.text_dim), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, jax.random.key(0)), x, t, context)["params"]


def test_1_3b_parameter_count_and_default_shardings():
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  boxed = abstract_params(WanConfig.t2v_1_3b())
  unboxed = nn.unbox(boxed)
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(unboxed)) == 1_418_996_800  # spec §8.6
  shardings = parallel.param_shardings(boxed, mesh)
  expected = {  # the stacked layer axis is never sharded
      ("blocks", "self_attn", "q", "kernel"): P(None, "fsdp", "tensor"),
      ("blocks", "self_attn", "o", "kernel"): P(None, "tensor", "fsdp"),
      ("blocks", "self_attn", "norm_q", "scale"): P(None, "tensor"),
      ("blocks", "cross_attn", "k", "bias"): P(None, "tensor"),
      ("blocks", "ffn_0", "kernel"): P(None, "fsdp", "tensor"),
      ("blocks", "ffn_1", "kernel"): P(None, "tensor", "fsdp"),
      ("blocks", "modulation"): P(None, None, "fsdp"),
      ("blocks", "norm3", "scale"): P(None, "fsdp"),
      ("patch_embedding", "kernel"): P(None, "fsdp"),
      ("text_embedding", "fc1", "kernel"): P(None, "fsdp"),
      ("time_projection", "kernel"): P("fsdp", "tensor"),
      ("head", "kernel"): P("fsdp", None),
  }
  for path, spec in expected.items():
    leaf = shardings
    for key in path:
      leaf = leaf[key]
    assert leaf.spec == spec, (path, leaf.spec, spec)
    assert leaf.mesh.shape == mesh.shape
  assert unboxed["blocks"]["self_attn"]["q"]["kernel"].shape == (30, 1536, 1536)


def test_sharded_forward_equals_unsharded():
  cfg = WanConfig.tiny()
  params = convert_wan.load_params(FIXTURES / "wan_tiny.safetensors", cfg)
  d = load_fixture("causal_train_forward")
  # Batch 4 so that it splits over data × fsdp = 4 devices.
  x = np.concatenate([np.moveaxis(d["noisy_latents"], 2, -1)] * 2)
  clean = np.concatenate([np.moveaxis(d["clean_latents"], 2, -1)] * 2)
  t = np.concatenate([d["tf_nfpb3_timestep"]] * 2)
  context = np.concatenate([d["prompt_embeds"]] * 2)
  model = wan.WanModel(cfg)
  layout = wan.Layout.block_causal(3)

  def run(p, x, t, context, clean):
    return model.apply({"params": p}, x, t, context, layout, clean_x=clean)

  unsharded = jax.jit(run)(params, x, t, context, clean)

  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t, context, layout, clean_x=clean))["params"]
  p_shard = parallel.param_shardings(boxed, mesh)
  in_shard = [parallel.batch_sharding(mesh, a.ndim) for a in (x, t, context, clean)]
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.DEFAULT_RULES):
    sharded_params = jax.device_put(params, p_shard)
    assert sharded_params["blocks"]["ffn_0"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
    args = [jax.device_put(a, s) for a, s in zip((x, t, context, clean), in_shard)]
    out = jax.jit(run, in_shardings=(p_shard, *in_shard))(sharded_params, *args)
  assert out.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(np.asarray(out), np.asarray(unsharded), atol=1e-5, rtol=0)  # reduction order differs across shards


def test_export_written_on_a_mesh_loads_on_one_device(tmp_path):
  """Generators exported on a pod are sampled on one GPU: params saved from arrays sharded over 8
  devices come back whole, and equal, in a process that has one."""
  cfg = WanConfig.tiny()
  params = convert_wan.load_params(FIXTURES / "wan_tiny.safetensors", cfg)
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  sharded = jax.device_put(params, parallel.param_shardings(abstract_params(cfg), mesh))
  assert sharded["blocks"]["ffn_0"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
  info = {"network": weights.NETWORKS["wan"].name, "config": checkpoint.config_dict(cfg)}
  checkpoint.save_params(tmp_path / "export", sharded, info)
  script = ("import sys, jax, numpy as np; from cf_jax import weights; assert jax.device_count() == 1; "
            "_, p = weights.load_wan(sys.argv[1]); "
            "np.savez(sys.argv[2], **{jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(p)})")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "export"), str(tmp_path / "loaded.npz")],
                       capture_output=True, text=True, timeout=300, env=env)
  assert run.returncode == 0, run.stderr[-2000:]
  with np.load(tmp_path / "loaded.npz") as loaded:
    expected = dict(jax.tree_util.tree_leaves_with_path(params))
    assert sorted(loaded.files) == sorted(jax.tree_util.keystr(k) for k in expected)
    for k, v in expected.items():
      np.testing.assert_array_equal(loaded[jax.tree_util.keystr(k)], v)
