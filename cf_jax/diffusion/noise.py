"""Gaussian noise drawn flat and reshaped, which XLA compiles in about a second.

`jax.random.normal` on a 5-D or 6-D shape lowers the threefry counters through one iota per
axis; on CPU that graph took tens of seconds to compile (61 s for [3, 1, 6, 20, 26, 16] on a loaded
2-core machine, 1 s flat). Threefry numbers the elements of a draw in row-major order, partitionable
or not, so the flat draw reshaped holds exactly the values of the shaped one: every key still
gives the same noise.
"""
import math

import jax
import jax.numpy as jnp


def normal(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Standard normal samples of `shape`, equal to `jax.random.normal(key, shape, dtype)`."""
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)
