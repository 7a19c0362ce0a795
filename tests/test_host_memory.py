"""Returning the compiler's freed heap to the OS (cf_jax.host_memory)."""
import ctypes
import ctypes.util
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cf_jax import host_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")


@glibc
def test_trim_returns_freed_heap():
  libc = ctypes.CDLL(ctypes.util.find_library("c"))
  libc.malloc.restype = ctypes.c_void_p
  libc.free.argtypes = [ctypes.c_void_p]
  # 64 MB in 64 KiB chunks, below the mmap threshold, so they are heap memory. Freeing every
  # other one leaves holes inside the heap that free() never hands back, only a trim.
  chunks = [libc.malloc(64 << 10) for _ in range(1024)]
  for chunk in chunks:
    ctypes.memset(chunk, 1, 64 << 10)
  for chunk in chunks[::2]:
    libc.free(chunk)
  assert host_memory.trim()
  for chunk in chunks[1::2]:
    libc.free(chunk)


def test_every_compile_is_followed_by_a_trim(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "trim", lambda: calls.append(1) or True)
  host_memory.trim_after_compiles()
  host_memory.trim_after_compiles()  # idempotent: one listener
  x = jnp.asarray(np.arange(7.0))  # a transfer, no compile
  before = len(calls)
  jax.jit(lambda x: jnp.sin(x) * 3.25)(x).block_until_ready()  # a program not compiled before
  assert len(calls) == before + 1
  jax.jit(lambda x: jnp.cos(x) - 1.5)(x).block_until_ready()
  assert len(calls) == before + 2
