"""Attention masks against the reference's flex-attention masks (fixture file c), and every backend
against a float64 reference with explicit masks: values, gradients, and splash on a mesh.

Shapes are tiny (F=6 frames of S=16 tokens, so L=96 or 192): sequences get padded and block
boundaries fall inside 128-token tiles, as 1560-token frames do at full size.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cf_jax.models import attention, splash
from cf_jax.models.attention import BlockMask
from tests.conftest import load_fixture

F, S = 6, 16  # fixture file c: frames and tokens per frame
B, H, DH = 2, 2, 32
VALUE_ATOL = 1e-5
GRAD_ATOL = 1e-4

TF1 = BlockMask("teacher_forcing", F, S, 1)
TF3 = BlockMask("teacher_forcing", F, S, 3)
CAUSAL1 = BlockMask("block_causal", F, S, 1)
CAUSAL3 = BlockMask("block_causal", F, S, 3)
LOCAL1 = BlockMask("block_causal", F, S, 1, local_attn_frames=3)
LOCAL3 = BlockMask("block_causal", F, S, 3, local_attn_frames=3)
BIDIRECTIONAL = BlockMask("bidirectional", F, S)
ALL_MASKS = (TF1, TF3, CAUSAL1, CAUSAL3, LOCAL1, LOCAL3, BIDIRECTIONAL)
BACKEND_MASKS = (TF3, LOCAL1, CAUSAL3, None)  # covers both layouts, a window, and no mask
REFERENCE_MASKS = {
    "mask_tf_nfpb1": TF1, "mask_tf_nfpb3": TF3, "mask_causal_nfpb1": CAUSAL1, "mask_causal_nfpb3": CAUSAL3,
}


def mask_id(mask: BlockMask | None) -> str:
  if mask is None:
    return "none"
  return f"{mask.kind}-K{mask.frames_per_block}-W{mask.local_attn_frames}"


def random_qkv(mask: BlockMask | None, batch: int = B, heads: int = H, seed: int = 0):
  """q, k, v [batch, L, heads, DH] fp32 and a cotangent of the same shape."""
  length = F * S if mask is None else mask.seq_len
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal((batch, length, heads, DH)).astype(np.float32) for _ in range(4))


def naive_attention(q, k, v, mask: BlockMask | None) -> np.ndarray:  # [B, L, H, DH]
  """Softmax over explicitly masked logits, in float64."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])  # [B, H, L, L]
  if mask is not None:
    logits = np.where(mask.dense(), logits, -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", probs, v)


def run_backend(backend: str, q, k, v, mask: BlockMask | None) -> jax.Array:  # [B, L, H, DH]
  if backend == "segmented":  # the cudnn backend's decomposition, on dense XLA kernels
    return attention.attend_segmented(q, k, v, mask, implementation="xla")
  return attention.attend(q, k, v, mask, backend)


@pytest.mark.parametrize("name", sorted(REFERENCE_MASKS))
def test_dense_matches_reference_masks(name):
  reference = load_fixture("causal_train_forward")[name]  # [P, P], padded like the reference
  mask = REFERENCE_MASKS[name]
  length, padded = mask.seq_len, reference.shape[0]
  np.testing.assert_array_equal(mask.dense(), reference[:length, :length])
  # Our reading of the fixture: pad rows see only themselves, real rows never see pad keys.
  np.testing.assert_array_equal(reference[length:], np.eye(padded, dtype=bool)[length:])
  assert not reference[:length, length:].any()
  # The splash mask, read tile by tile as the kernel factory does, is the reference padded mask.
  splash_mask = splash._PaddedMask(mask, length, length, (padded, padded))  # pylint: disable=protected-access
  tile = 64
  tiles = [
      [splash_mask[i:i + tile, j:j + tile] for j in range(0, padded, tile)] for i in range(0, padded, tile)
  ]
  np.testing.assert_array_equal(np.block(tiles), reference)


@pytest.mark.parametrize("mask", ALL_MASKS, ids=mask_id)
def test_key_ranges_reproduce_dense(mask):
  rebuilt = np.zeros((mask.seq_len, mask.seq_len), bool)
  for q0, q1, ranges in mask.key_ranges():
    assert not rebuilt[q0:q1].any(), "query blocks overlap"
    for k0, k1 in ranges:
      assert not rebuilt[q0:q1, k0:k1].any(), "key ranges overlap"
      rebuilt[q0:q1, k0:k1] = True
  np.testing.assert_array_equal(rebuilt, mask.dense())


@pytest.mark.parametrize("backend", ["xla", "blocksparse", "splash", "segmented"])
@pytest.mark.parametrize("mask", BACKEND_MASKS, ids=mask_id)
def test_backend_values_match_naive_reference(mask, backend):
  q, k, v, _ = random_qkv(mask)
  out = run_backend(backend, q, k, v, mask)
  np.testing.assert_allclose(np.asarray(out), naive_attention(q, k, v, mask), atol=VALUE_ATOL, rtol=0)


@pytest.mark.parametrize(
    "mask, backend",
    [(mask, backend) for backend in ("splash", "segmented") for mask in BACKEND_MASKS]
    + [(mask, "blocksparse") for mask in ALL_MASKS + (None,)],
    ids=lambda x: x if isinstance(x, str) else mask_id(x),
)
def test_backend_gradients_match_xla(mask, backend):
  q, k, v, cotangent = random_qkv(mask)

  def grads(backend):
    loss = lambda q, k, v: jnp.sum(run_backend(backend, q, k, v, mask) * cotangent)
    return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

  for name, got, want in zip("qkv", grads(backend), grads("xla")):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=GRAD_ATOL, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("kv_len", [3 * S, 4 * S, F * S])  # blocksparse: inside, at the end of a range, all
@pytest.mark.parametrize("backend", ["splash", "xla", "blocksparse"])
def test_prefix_attention_matches_naive_reference(backend, kv_len):
  rng = np.random.default_rng(1)
  q = rng.standard_normal((B, 2 * S, H, DH)).astype(np.float32)  # one 2-frame chunk
  k, v = (rng.standard_normal((B, F * S, H, DH)).astype(np.float32) for _ in range(2))  # the cache
  heads_major = lambda x: x.swapaxes(1, 2)  # the cache layout [B, H, Lk, Dh]
  out = jax.jit(lambda q, k, v, n: attention.attend_prefix(q, heads_major(k), heads_major(v), n, backend))(
      q, k, v, kv_len)
  expected = naive_attention(q, k[:, :kv_len], v[:, :kv_len], None)
  np.testing.assert_allclose(np.asarray(out), expected, atol=VALUE_ATOL, rtol=0)


@pytest.mark.parametrize("kv_len", [S, 3 * S, 5 * S])
def test_blocksparse_prefix_gradients_match_xla(kv_len):
  rng = np.random.default_rng(2)
  q, cotangent = (rng.standard_normal((B, 2 * S, H, DH)).astype(np.float32) for _ in range(2))
  k, v = (rng.standard_normal((B, H, F * S, DH)).astype(np.float32) for _ in range(2))  # the cache, heads-major

  def grads(backend):
    loss = lambda q, k, v, n: jnp.sum(attention.attend_prefix(q, k, v, n, backend) * cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v, kv_len)

  for name, got, want in zip("qkv", grads("blocksparse"), grads("xla")):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=GRAD_ATOL, rtol=0, err_msg=f"d{name}")


def test_auto_resolves_per_platform():
  assert attention.resolve_backend("auto", jnp.float32, "cpu") == "blocksparse"
  assert attention.resolve_backend("auto", jnp.bfloat16, "tpu") == "splash"
  assert attention.resolve_backend("auto", jnp.bfloat16, "gpu") == "cudnn"
  assert attention.resolve_backend("auto", jnp.float32, "gpu") == "blocksparse"  # cudnn has no fp32
  assert attention.resolve_backend("xla", jnp.float32, "tpu") == "xla"
  with pytest.raises(ValueError, match="unknown attention backend"):
    attention.resolve_backend("flash")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cudnn attention needs a GPU")
@pytest.mark.parametrize("mask", BACKEND_MASKS, ids=mask_id)
def test_cudnn_matches_xla_in_bf16(mask):
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv(mask)[:3])
  out = attention.attend(q, k, v, mask, "cudnn")
  expected = attention.attend(q, k, v, mask, "xla")
  np.testing.assert_allclose(
      np.asarray(out, np.float32), np.asarray(expected, np.float32), atol=2e-2, rtol=0
  )


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Auto, jax.sharding.AxisType.Explicit])
def test_splash_sharded_equals_unsharded(axis_type):
  q, k, v, _ = random_qkv(TF3, batch=4, heads=4)
  expected = attention.attend(q, k, v, TF3, "splash")
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(axis_type,) * 3)
  sharding = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
  with jax.set_mesh(mesh):
    q, k, v = (jax.device_put(x, sharding) for x in (q, k, v))
    out = jax.jit(lambda q, k, v: attention.attend(q, k, v, TF3, "splash"))(q, k, v)
  assert out.sharding.spec == sharding.spec
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("lq, lk", [(F * S, 16), (2 * F * S, 200)])
def test_splash_cross_attention_sees_exactly_the_keys(lq, lk):
  # Cross-attention to the text: Lq ≠ Lk, both padded (to 128 and to 256), pad keys hidden.
  rng = np.random.default_rng(1)
  q = rng.standard_normal((B, lq, H, DH)).astype(np.float32)
  k, v = (rng.standard_normal((B, lk, H, DH)).astype(np.float32) for _ in range(2))
  out = attention.attend(q, k, v, None, "splash")
  assert out.shape == q.shape
  np.testing.assert_allclose(np.asarray(out), naive_attention(q, k, v, None), atol=VALUE_ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(out), np.asarray(attention.attend(q, k, v, None, "xla")),
                             atol=VALUE_ATOL, rtol=0)


def test_teacher_forcing_predicate_has_no_boolean_select():
  # Mosaic cannot lower where(bool, bool, bool): the predicate is built from & | ~ alone.
  q = jax.ShapeDtypeStruct((8, 1), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda q, kv: TF3.allowed(q, kv))(q, jax.ShapeDtypeStruct((1, 8), jnp.int32))
  selects = [e for e in jaxpr.eqns if e.primitive.name == "select_n"]
  assert all(e.outvars[0].aval.dtype != jnp.bool_ for e in selects)
  np.testing.assert_array_equal(TF3.dense(), load_fixture("causal_train_forward")["mask_tf_nfpb3"][:192, :192])
