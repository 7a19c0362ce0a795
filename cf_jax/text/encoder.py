"""Prompts → umT5 text embeddings, batched over this host's local devices."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cf_jax import weights
from cf_jax.models import t5
from cf_jax.text.tokenizer import UMT5Tokenizer

BF16 = ml_dtypes.bfloat16


class TextEncoder:
  """Cleans and tokenizes prompts, runs the encoder, returns embeddings with zeroed padding rows.

  Parameters are replicated on every local device and each batch is split over them, so a host
  with 8 chips encodes 8 prompts at once per step.
  """

  def __init__(self, config: t5.T5Config, params, tokenizer: UMT5Tokenizer, dtype=jnp.float32):
    self.config = config
    self.tokenizer = tokenizer
    model = t5.UMT5Encoder(config, dtype=dtype)
    self._mesh = _local_mesh()
    self._params = jax.device_put(params, NamedSharding(self._mesh, P()))  # no copy if `load` placed them
    self._batch_sharding = NamedSharding(self._mesh, P("data"))
    self._forward = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask))

  @classmethod
  def load(cls, t5_checkpoint: str, tokenizer_dir: str, preset: str = "umt5_xxl", seq_len: int = 512,
           dtype=jnp.float32) -> "TextEncoder":
    config = None if weights.is_params_checkpoint(t5_checkpoint) else weights.NETWORKS["t5"].preset(preset)
    config, params = weights.load("t5", t5_checkpoint, config)
    params = weights.to_device(params, NamedSharding(_local_mesh(), P()))  # one copy at a time, not two trees
    return cls(config, params, UMT5Tokenizer(tokenizer_dir, seq_len), dtype)

  def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [B, seq_len, dim] float32 and token counts [B] (EOS included)."""
    ids, mask = self.tokenizer(prompts)  # [B, L] each
    n = len(prompts)
    pad = -n % self._mesh.size
    ids, mask = (np.concatenate([a, np.zeros((pad, a.shape[1]), a.dtype)]) for a in (ids, mask))
    ids, mask = (jax.device_put(a, self._batch_sharding) for a in (ids, mask))
    embeds = self._forward(self._params, ids, mask)
    return np.asarray(embeds[:n], np.float32), np.asarray(mask[:n]).sum(axis=1)


def _local_mesh() -> Mesh:
  """This host's devices, one data axis: the parameters replicated, each batch split over them."""
  return Mesh(np.array(jax.local_devices()), ("data",))
