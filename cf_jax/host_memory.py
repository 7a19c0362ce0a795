"""Handing the host heap that XLA's compiler frees back to the operating system.

Compiling one jitted function on CPU allocates tens of MB of compiler state (LLVM modules, HLO
passes) and frees it when the executable is built. glibc keeps such freed memory in its
per-thread arenas, so the process's resident memory stays at the compile's high-water mark:
compiling the sampler's block function of the CPU perf anchor leaves 84 MB resident that
`malloc_trim` returns. Every cf_jax command-line tool (`cli.run`) therefore trims the heap after
each backend compile; a compile takes seconds and a trim milliseconds.

Without glibc (macOS, musl) there is nothing to trim and these are no-ops.
"""
import ctypes
import ctypes.util
import functools

from jax import monitoring

# The event jax records once XLA has compiled an executable (jax._src.dispatch.BACKEND_COMPILE_EVENT).
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
  except (OSError, AttributeError):  # no C library by that name, or not glibc
    return None


def trim() -> bool:
  """Returns the free memory at the top of the heap and in the arenas to the OS (glibc
  `malloc_trim(0)`); True if any was returned."""
  malloc_trim = _malloc_trim()
  return bool(malloc_trim(0)) if malloc_trim is not None else False


@functools.cache
def trim_after_compiles() -> None:
  """From now on, trims the heap after every XLA compile of this process (idempotent)."""

  def on_duration(event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs, kwargs
    if event == _BACKEND_COMPILE_EVENT:
      trim()

  monitoring.register_event_duration_secs_listener(on_duration)
