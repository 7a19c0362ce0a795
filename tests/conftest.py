"""Test set-up: CPU only, a fake 8-device mesh, fp32 matmuls.

XLA reads its flags once, when JAX starts, so they are set here before anything imports jax.
"""
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Trainers built twice with the same config (resume tests, CLI subprocesses, which inherit the
# environment) compile the same programs: a persistent cache makes the repeats disk reads.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(__file__).parent.parent / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = pathlib.Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


def load_fixture(name: str) -> dict[str, np.ndarray]:
  """The arrays of `tests/fixtures/<name>.npz`, loaded eagerly."""
  with np.load(FIXTURES / f"{name}.npz") as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def toy_smoke_run(tmp_path_factory) -> pathlib.Path:
  """The workdir of one run of the README's first command, shortened (`configs/toy.py:smoke`),
  through the real CLI: test_toy checks it, and the injectivity smoke reuses its data and teachers
  (the toy stages are most of either run's time)."""
  workdir = tmp_path_factory.mktemp("toy_smoke")
  run = subprocess.run(
      [sys.executable, "-m", "cf_jax.train", "--config", "configs/toy.py:smoke", "--workdir", str(workdir)],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  return workdir
