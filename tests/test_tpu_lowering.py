"""Splash attention lowered and compiled by the TPU compiler (not interpreted), from this CPU host,
against compile-only devices of a TPU topology (libtpu, the `tpu` extra).

Interpret mode accepts kernels Mosaic rejects (a boolean select in the teacher-forcing mask did),
so only a real lowering shows that the kernels compile for a pod.
"""
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cf_jax import parallel
from cf_jax import topology
from cf_jax.models import attention, splash
from cf_jax.models.attention import BlockMask

F, S, DH = 6, 200, 128  # 1200-token halves: block boundaries inside 512-token tiles
MASKS = {
    "teacher_forcing": BlockMask("teacher_forcing", F, S, 3),
    "block_causal": BlockMask("block_causal", F, S, 1),
    "local": BlockMask("block_causal", F, S, 1, local_attn_frames=3),
    "bidirectional": BlockMask("bidirectional", F, S),
    "none": None,
}


@pytest.fixture(scope="module")
def tpu_mesh():
  return parallel.make_mesh(data=2, tensor=2, devices=topology.compile_only_devices("v5p:2x2x1"))


def abstract(mesh, shape):
  return jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=NamedSharding(mesh, P("data", None, "tensor")))


def compile_for(mesh, fn, *shapes):
  # conftest asks for fp32 matmuls, which Mosaic rejects on bf16 operands; training uses the default.
  with jax.set_mesh(mesh), jax.default_matmul_precision("default"):
    assert not splash.interpret_mode(), "a TPU mesh is a TPU target"
    return jax.jit(fn).lower(*(abstract(mesh, s) for s in shapes)).compile()


@pytest.mark.parametrize("name", sorted(MASKS))
def test_self_attention_compiles_for_tpu_with_gradients(tpu_mesh, name):
  mask = MASKS[name]
  length = F * S if mask is None else mask.seq_len
  shape = (4, length, 4, DH)

  def loss(q, k, v):
    return attention.attend(q, k, v, mask, "splash").astype(jnp.float32).sum()

  compiled = compile_for(tpu_mesh, jax.grad(loss, argnums=(0, 1, 2)), shape, shape, shape)
  assert compiled.memory_analysis().temp_size_in_bytes > 0
  assert "tpu_custom_call" in compiled.as_text()  # the Mosaic kernel, not an emulation


def test_cross_and_prefix_attention_compile_for_tpu(tpu_mesh):
  q, text = (4, F * S, 4, DH), (4, 512, 4, DH)
  cross = compile_for(tpu_mesh, lambda q, k, v: attention.attend(q, k, v, None, "splash"), q, text, text)
  assert "tpu_custom_call" in cross.as_text()
  cache = (4, 4, F * S, DH)  # a KV cache layer, heads-major [B, H, Lk, Dh]
  prefix = compile_for(tpu_mesh, lambda q, k, v: attention.attend_prefix(q, k, v, jnp.int32(700), "splash"),
                       (4, S, 4, DH), cache, cache)
  assert "tpu_custom_call" in prefix.as_text()


def test_mesh_splits_a_physical_axis_of_a_16x16_torus():
  # tensor=4 needs part of a torus side: 12 and 40 heads do not divide 16.
  mesh = parallel.make_mesh(data=-1, fsdp=16, tensor=4, devices=topology.compile_only_devices("v6e:16x16"))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 16, "tensor": 4}
  assert len({d.id for d in mesh.devices.flat}) == 256
  tensor_group = mesh.devices[0, 0, :]
  assert len({tuple(d.coords) for d in tensor_group}) == 4  # four distinct chips, neighbours on the torus
