"""The flat noise draw is the shaped `jax.random.normal` draw, value for value."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax.diffusion import noise


@pytest.mark.parametrize("shape", [(3,), (2, 5), (2, 1, 3, 4, 2, 4)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_flat_draw_equals_shaped_draw(shape, dtype):
  key = jax.random.fold_in(jax.random.key(7), 3)
  got = jax.jit(lambda k: noise.normal(k, shape, dtype))(key)
  want = jax.random.normal(key, shape, dtype)
  assert got.shape == shape and got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
