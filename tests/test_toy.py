"""The README's first command, shortened: the toy recipe end to end (data, bidirectional teacher,
AR teacher, ODE pairs, causal ODE, DMD, samples, metrics, GIF) through the real CLI."""
import json
import pathlib
import subprocess
import sys

from cf_jax import weights

ROOT = pathlib.Path(__file__).parent.parent
STAGES = ("teacher", "ar_diffusion", "causal_ode", "dmd")


def test_toy_recipe_smoke(tmp_path):
  run = subprocess.run(
      [sys.executable, "-m", "cf_jax.train", "--config", "configs/toy.py:smoke", "--workdir", str(tmp_path)],
      capture_output=True, text=True, timeout=900, cwd=ROOT,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["distances"]) == {"real (other videos)", *STAGES}
  for distances in summary["distances"].values():
    assert {"frame_fd", "motion_fd"} <= set(distances)
  # Real videos of another seed are far closer to the real set than anything 4 steps of training make.
  real = summary["distances"]["real (other videos)"]["frame_fd"]
  assert all(summary["distances"][s]["frame_fd"] > real for s in STAGES)
  assert (tmp_path / "samples.gif").stat().st_size > 0
  assert "| videos |" in (tmp_path / "summary.md").read_text()
  cfg, params = weights.load_wan(tmp_path / "dmd" / "export" / "generator_ema")
  assert cfg.in_dim == 4 and "blocks" in params
  pairs = json.loads((tmp_path / "ode_pairs" / "manifest.json").read_text())
  assert pairs["num_records"] == 16 and pairs["teacher"] == "autoregressive"
