"""The README's first command, shortened: the toy recipe end to end (data, bidirectional teacher,
AR teacher, ODE pairs, causal ODE, DMD, samples, metrics, GIF) through the real CLI, as the
`toy_smoke_run` fixture ran it."""
import json

from cf_jax import weights

STAGES = ("teacher", "ar_diffusion", "causal_ode", "dmd")


def test_toy_recipe_smoke(toy_smoke_run):
  summary = json.loads((toy_smoke_run / "summary.json").read_text())
  assert set(summary["distances"]) == {"real (other videos)", *STAGES}
  for distances in summary["distances"].values():
    assert {"frame_fd", "motion_fd"} <= set(distances)
  # Real videos of another seed are far closer to the real set than anything 4 steps of training make.
  real = summary["distances"]["real (other videos)"]["frame_fd"]
  assert all(summary["distances"][s]["frame_fd"] > real for s in STAGES)
  assert (toy_smoke_run / "samples.gif").stat().st_size > 0
  assert "| videos |" in (toy_smoke_run / "summary.md").read_text()
  cfg, params = weights.load_wan(toy_smoke_run / "dmd" / "export" / "generator_ema")
  assert cfg.in_dim == 4 and "blocks" in params
  pairs = json.loads((toy_smoke_run / "ode_pairs" / "manifest.json").read_text())
  assert pairs["num_records"] == 16 and pairs["teacher"] == "autoregressive"
