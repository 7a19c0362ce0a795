"""Causal Forcing's central claim on the toy recipe: ODE pairs from an AR teacher against ODE pairs
from a bidirectional teacher, everything else identical.

    python -m cf_jax.experiments.injectivity --config configs/injectivity.py --workdir runs/injectivity

A causal student's block b cannot see the noise of later frames. The AR teacher's ODE map
(teacher forcing on the ground-truth history) does not depend on it either, so ODE regression can
recover it; the bidirectional teacher's block b does depend on it, so the student can only regress
the average over that noise (a blurry target), and DMD starts from there. The experiment:

  teachers        the toy recipe's bidirectional `teacher` and AR `ar_diffusion`, trained once
                  under the workdir (or reused from a toy run: --config.toy_workdir)
  per seed, arm   ODE pairs from the arm's teacher (same videos, same noise), causal ODE
                  regression from the AR teacher, DMD from that, with identical settings; recorded:
                  the ODE loss floor and the distances of 4-step samples to held-out real videos
                  after ODE and after DMD
  non-injectivity per teacher and block b: the spread of block b of the ODE endpoint when only the
                  noise after block b is redrawn, relative to its spread over independent noises
                  (0 for the AR teacher by construction)

Outputs: results.json (every number), results.md (the table, also printed) and injectivity.png.
"""
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_flags
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from cf_jax import video_metrics
from cf_jax import weights
from cf_jax.data import records
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import teacher_sampling
from cf_jax.models import wan
from cf_jax.recipes import toy as recipe
from cf_jax.training import ode_pairs
from cf_jax.training.trainer import Trainer

ARMS = ("autoregressive", "bidirectional")  # which teacher's ODE pairs the student regresses
TEACHER_STAGE = {"autoregressive": "ar_diffusion", "bidirectional": "teacher"}
COLORS = {"autoregressive": (31, 119, 180), "bidirectional": (230, 120, 20)}


# -- non-injectivity of a teacher's ODE map -------------------------------------------------------

def resampled_after_block(z: jax.Array, key: jax.Array, frames_per_block: int, resamples: int) -> jax.Array:
  """Noise videos [num_blocks, M, F, H, W, C]: row b is z [F, H, W, C] with the frames after block
  b redrawn M times (the frames up to the end of block b kept)."""
  num_blocks = z.shape[0] // frames_per_block
  fresh = noise_lib.normal(key, (num_blocks, resamples, *z.shape), z.dtype)
  kept = jnp.arange(z.shape[0]) < frames_per_block * (jnp.arange(num_blocks)[:, None] + 1)  # [num_blocks, F]
  return jnp.where(kept[:, None, :, None, None, None], z, fresh)


def block_spread(videos: np.ndarray, frames_per_block: int) -> np.ndarray:
  """Per-element std across videos [M, F, H, W, C], averaged over each block: [num_blocks]."""
  std = np.std(np.asarray(videos, np.float64), axis=0, ddof=1)  # [F, H, W, C]
  return std.reshape(std.shape[0] // frames_per_block, -1).mean(axis=1)


def ode_endpoints(model: wan.WanModel, params, layout: wan.Layout, noise: jax.Array, clean: jax.Array,
                  cond: jax.Array, uncond: jax.Array, guidance_weight: float, batch_size: int) -> np.ndarray:
  """The teacher's 48-step Euler ODE endpoints [N, F, H, W, C] from noise [N, F, H, W, C], for one
  prompt (cond, uncond [Lt, D]) and, with a block-causal layout, the ground-truth history clean
  [F, H, W, C] by teacher forcing, as the ODE pairs have it; batch_size videos per call."""
  out = []
  for start in range(0, len(noise), batch_size):
    x = noise[start : start + batch_size]  # [n, F, H, W, C]
    n = x.shape[0]
    history = jnp.broadcast_to(clean, x.shape) if layout.causal else None
    prompts = [jnp.broadcast_to(p, (n, *p.shape)) for p in (cond, uncond)]  # [n, Lt, D] each
    trajectory = teacher_sampling.sample_ode_trajectory(
        model, params, x, history, *prompts, layout, guidance_weight, record=())  # [n, 2, F, H, W, C]
    out.append(np.asarray(trajectory[:, 0]))
  return np.concatenate(out)


def non_injectivity(model: wan.WanModel, params, layout: wan.Layout, clean: np.ndarray, cond: np.ndarray,
                    uncond: np.ndarray, key: jax.Array, frames_per_block: int, resamples: int = 8,
                    guidance_weight: float = 1.0, batch_size: int = 16) -> np.ndarray:
  """How much block b of the teacher's ODE endpoint depends on the noise of later frames: [Z, num_blocks]
  for Z (history, prompt) pairs, clean [Z, F, H, W, C] and cond, uncond [Z, Lt, D].

  For a noise video z, the per-element std of block b over `resamples` redraws of the noise after
  block b, divided by its std over as many fully independent noise videos. 0: block b is a
  function of its own and earlier noise (given the history), the map is injective block by block.
  The last block has no later frames, so its entry is 0 for any teacher."""
  num_blocks = clean.shape[1] // frames_per_block
  ratios = []
  for i in range(len(clean)):
    k_z, k_after, k_free = jax.random.split(jax.random.fold_in(key, i), 3)
    z = noise_lib.normal(k_z, clean.shape[1:])  # [F, H, W, C]
    after = resampled_after_block(z, k_after, frames_per_block, resamples)  # [num_blocks, M, F, H, W, C]
    free = noise_lib.normal(k_free, (resamples, *z.shape))  # [M, F, H, W, C]
    noise = jnp.concatenate([after.reshape(-1, *z.shape), free])
    ends = ode_endpoints(model, params, layout, noise, jnp.asarray(clean[i]), jnp.asarray(cond[i]),
                         jnp.asarray(uncond[i]), guidance_weight, batch_size)
    ends = ends.reshape(num_blocks + 1, resamples, *z.shape)
    spread = np.array([block_spread(ends[b], frames_per_block)[b] for b in range(num_blocks)])
    ratios.append(spread / block_spread(ends[-1], frames_per_block))
  return np.stack(ratios)


def teacher_non_injectivity(toy: ml_collections.ConfigDict, root: pathlib.Path, arm: str, clean: np.ndarray,
                            cond: np.ndarray, key: jax.Array, resamples: int) -> np.ndarray:
  """`non_injectivity` [Z, num_blocks] of the arm's trained teacher, as its ODE pairs run it."""
  cfg, params = weights.load_wan(root / TEACHER_STAGE[arm] / "export" / "generator")
  causal = arm == "autoregressive"
  layout = wan.Layout.block_causal(toy.frames_per_block) if causal else wan.Layout.bidirectional()
  return non_injectivity(wan.WanModel(cfg), params, layout, clean, cond, np.zeros_like(cond), key,
                         toy.frames_per_block, resamples, toy.guidance_scale, toy.batch_size)


# -- the two arms -----------------------------------------------------------------------------------

def prepare_teachers(toy: ml_collections.ConfigDict, workdir: pathlib.Path, toy_workdir: str) -> pathlib.Path:
  """The directory with data/{train,eval} and the teacher and ar_diffusion exports: an existing toy
  run, or the workdir after writing the data and training both teachers there."""
  if toy_workdir:
    root = pathlib.Path(toy_workdir).absolute()
    needed = [root / "data" / s / records.MANIFEST for s in ("train", "eval")]
    needed += [root / s / "export" / "generator" for s in TEACHER_STAGE.values()]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
      raise ValueError(f"toy_workdir {root} is not a finished toy run: missing {', '.join(missing)}")
    return root
  recipe.write_datasets(toy, workdir)
  configs = recipe.stage_configs(toy, workdir)
  for stage in ("teacher", "ar_diffusion"):  # the AR teacher starts from the bidirectional one
    print(f"== {stage}")
    Trainer(configs[stage], str(workdir / stage)).run()
  return workdir


def arm_configs(toy: ml_collections.ConfigDict, root: pathlib.Path, run_dir: pathlib.Path, arm: str,
                seed: int) -> dict[str, ml_collections.ConfigDict]:
  """The toy recipe's ode_pairs, causal_ode and dmd configs for one arm and seed: only the teacher
  of the pairs differs between arms; the seed sets the pairs' noise, the init rng and data order."""
  configs = recipe.stage_configs(toy, root)
  pairs, ode, dmd = configs["ode_pairs"], configs["causal_ode"], configs["dmd"]
  pairs.update(teacher=arm, seed=seed)
  pairs.init.generator = str(root / TEACHER_STAGE[arm] / "export" / "generator")
  for c in (ode, dmd):
    c.seed = c.data.shuffle_seed = seed
  ode.data.path = str(run_dir / "ode_pairs")
  ode.log_every = 1  # every step's loss, for the loss floor
  dmd.init.generator = str(run_dir / "causal_ode" / "export" / "generator")
  return {"ode_pairs": pairs, "causal_ode": ode, "dmd": dmd}


def loss_floor(metrics_path: pathlib.Path, fraction: float) -> float:
  """Mean `generator/loss` over the last `fraction` of the logged steps (a resumed run's repeated
  steps counted once)."""
  losses = {}
  for line in metrics_path.read_text().splitlines():
    entry = json.loads(line)
    if "generator/loss" in entry:
      losses[entry["step"]] = entry["generator/loss"]
  values = [losses[s] for s in sorted(losses)]
  return float(np.mean(values[-max(1, round(fraction * len(values))):]))


def run_arm(toy: ml_collections.ConfigDict, root: pathlib.Path, run_dir: pathlib.Path, arm: str, seed: int,
            real: np.ndarray, context: np.ndarray, floor_fraction: float) -> dict:
  """ODE pairs, causal ODE and DMD of one arm and seed; the ODE loss floor and the distances of the
  4-step samples to the real videos [N, F, H, W, C] after ODE and after DMD."""
  tick = time.perf_counter()
  configs = arm_configs(toy, root, run_dir, arm, seed)
  ode_pairs.generate(configs["ode_pairs"], str(run_dir / "ode_pairs"))
  for stage in ("causal_ode", "dmd"):
    Trainer(configs[stage], str(run_dir / stage)).run()
  key = jax.random.fold_in(jax.random.key(toy.seed + 2), seed)  # the same for both arms
  noise = noise_lib.normal(jax.random.fold_in(key, 0), real.shape)
  sample = lambda stage, net: recipe.few_step_samples(toy, run_dir / stage / "export" / net, context, noise,
                                               jax.random.fold_in(key, 1))
  return {
      "seed": seed,
      "ode_loss_floor": loss_floor(run_dir / "causal_ode" / "metrics.jsonl", floor_fraction),
      "after_ode": video_metrics.video_distances(real, sample("causal_ode", "generator")),
      "after_dmd": video_metrics.video_distances(real, sample("dmd", "generator_ema")),
      "seconds": time.perf_counter() - tick,
  }


# -- report -------------------------------------------------------------------------------------------

COLUMNS = {
    "ODE loss floor": lambda r: r["ode_loss_floor"],
    "frame_fd after ODE": lambda r: r["after_ode"]["frame_fd"],
    "motion_fd after ODE": lambda r: r["after_ode"]["motion_fd"],
    "frame_fd after DMD": lambda r: r["after_dmd"]["frame_fd"],
    "motion_fd after DMD": lambda r: r["after_dmd"]["motion_fd"],
}


def mean_std(values) -> tuple[float, float]:
  """Mean and sample std (0 for a single value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summary(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
  """Per arm: (mean, std) over seeds of every column, and of the teacher's non-injectivity of each
  block over the noise videos (`block <b>`)."""
  out = {}
  for arm in ARMS:
    out[arm] = {name: mean_std([get(r) for r in results["runs"][arm]]) for name, get in COLUMNS.items()}
    per_block = np.asarray(results["non_injectivity"][arm])  # [Z, num_blocks]
    out[arm].update({f"block {b}": mean_std(per_block[:, b]) for b in range(per_block.shape[1])})
  return out


def format_table(results: dict) -> str:
  stats = summary(results)
  blocks = [k for k in stats[ARMS[0]] if k.startswith("block ")]
  lines = ["| ODE pairs from | " + " | ".join(COLUMNS) + " | teacher non-injectivity (" + " / ".join(blocks) + ") |",
           "|---" * (len(COLUMNS) + 2) + "|"]
  for arm in ARMS:
    cells = [f"{m:.4g} ± {s:.2g}" for m, s in (stats[arm][c] for c in COLUMNS)]
    injectivity = " / ".join(f"{stats[arm][b][0]:.3g}" for b in blocks)
    lines.append(f"| {arm} teacher | " + " | ".join(cells) + f" | {injectivity} |")
  reference = results["real_reference"]
  lines += ["", f"Mean ± std over seeds {results['seeds']}. Distances: 4-step samples against held-out real "
            f"videos (real against other real videos: frame_fd {reference['frame_fd']:.3g}, motion_fd "
            f"{reference['motion_fd']:.3g}). Non-injectivity: spread of block b's ODE endpoint when only "
            "later frames' noise is redrawn, over its spread across independent noises (mean over noise videos)."]
  return "\n".join(lines)


def draw_bars(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str, groups: list[str],
              values: dict[str, list[tuple[float, float]]], font: ImageFont.ImageFont) -> None:
  """A bar chart in box (x0, y0, x1, y1): per group, one bar per arm, values[arm] = (mean, std)
  per group, the std as an error bar."""
  x0, y0, x1, y1 = box
  left, top, right, bottom = x0 + 60, y0 + 30, x1 - 15, y1 - 30  # the axes
  high = max(m + s for v in values.values() for m, s in v) * 1.15 or 1.0
  y = lambda v: bottom - (bottom - top) * min(max(v, 0.0), high) / high
  draw.text(((x0 + x1) / 2, y0 + 4), title, fill="black", font=font, anchor="mt")
  draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
  for k in range(5):
    v = high * k / 4
    draw.line([(left - 4, y(v)), (left, y(v))], fill="black")
    draw.text((left - 6, y(v)), f"{v:.3g}", fill="black", font=font, anchor="rm")
  slot = (right - left) / len(groups)
  width = slot * 0.7 / len(values)
  for g, group in enumerate(groups):
    draw.text((left + slot * (g + 0.5), bottom + 6), group, fill="black", font=font, anchor="mt")
    for a, (arm, stats) in enumerate(values.items()):
      mean, std = stats[g]
      x = left + slot * (g + 0.15) + width * (a + 0.5)  # the bar's centre
      draw.rectangle([x - width / 2 + 1, y(mean), x + width / 2 - 1, bottom], fill=COLORS[arm])
      if std > 0:
        for e in (y(mean - std), y(mean + std)):
          draw.line([(x - width / 4, e), (x + width / 4, e)], fill="black", width=2)
        draw.line([(x, y(mean - std)), (x, y(mean + std))], fill="black", width=2)
      draw.text((x, y(mean + std) - 3), f"{mean:.3g}", fill="black", font=font, anchor="mb")


def plot(results: dict, path: pathlib.Path) -> None:
  """Loss floor, distances after ODE and DMD (mean ± std over seeds) and the teachers'
  non-injectivity per block (± std over noise videos), one panel each."""
  stats = summary(results)
  blocks = [k for k in stats[ARMS[0]] if k.startswith("block ")]
  panels = [
      ("ODE regression loss floor", [("", "ODE loss floor")]),
      ("frame_fd to real videos", [("after ODE", "frame_fd after ODE"), ("after DMD", "frame_fd after DMD")]),
      ("motion_fd to real videos", [("after ODE", "motion_fd after ODE"), ("after DMD", "motion_fd after DMD")]),
      ("teacher non-injectivity", [(b, b) for b in blocks]),
  ]
  panel_width, height = 340, 440
  image = Image.new("RGB", (panel_width * len(panels), height), "white")
  draw = ImageDraw.Draw(image)
  font = ImageFont.load_default(size=14)
  draw.text((10, 8), f"ODE pairs from each teacher (mean ± std over {len(results['seeds'])} seeds):",
            fill="black", font=font)
  for a, arm in enumerate(ARMS):
    x = 420 + 230 * a
    draw.rectangle([x, 8, x + 14, 22], fill=COLORS[arm])
    draw.text((x + 20, 8), f"{arm} teacher", fill="black", font=font)
  for i, (title, groups) in enumerate(panels):
    box = (panel_width * i, 40, panel_width * (i + 1), height)
    values = {arm: [stats[arm][key] for _, key in groups] for arm in ARMS}
    draw_bars(draw, box, title, [label for label, _ in groups], values, font)
  image.save(path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole experiment; returns what results.json holds."""
  start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  toy = config.toy
  root = prepare_teachers(toy, workdir, config.toy_workdir)
  real, context = recipe.load_videos(root / "data" / "eval")  # held out
  train, train_context = recipe.load_videos(root / "data" / "train", max(len(real), config.num_noises))
  results = {"config": json.loads(config.to_json_best_effort()), "seeds": list(config.seeds),
             "real_reference": video_metrics.video_distances(real, train[: len(real)]),
             "non_injectivity": {}, "runs": {arm: [] for arm in ARMS}}
  for arm in ARMS:
    print(f"== non-injectivity of the {arm} teacher")
    ratios = teacher_non_injectivity(toy, root, arm, train[: config.num_noises], train_context[: config.num_noises],
                                     jax.random.key(config.noise_seed), config.resamples)  # same z for both
    results["non_injectivity"][arm] = ratios.tolist()
  for seed in config.seeds:
    for arm in ARMS:
      print(f"== seed {seed}: ODE pairs from the {arm} teacher")
      run_dir = workdir / f"seed{seed}" / arm
      results["runs"][arm].append(run_arm(toy, root, run_dir, arm, seed, real, context, config.floor_fraction))
      (workdir / "results.json").write_text(json.dumps(results, indent=1))
  results["seconds"] = time.perf_counter() - start
  (workdir / "results.json").write_text(json.dumps(results, indent=1))
  table = format_table(results)
  (workdir / "results.md").write_text(table + "\n")
  plot(results, workdir / "injectivity.png")
  print(table)
  print(f"total {results['seconds']:.0f} s; plot {workdir / 'injectivity.png'}")
  return results


_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/injectivity.py[:smoke]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/injectivity", "Run directory.")
_CACHE = flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache (default: <workdir>/xla_cache).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  if _CONFIG.value is None:
    print("error: --config is required, e.g. --config configs/injectivity.py", file=sys.stderr)
    sys.exit(1)
  # Every arm and seed compiles the same programs again (each Trainer jits its own steps); the
  # persistent cache turns the repeats into disk reads.
  jax.config.update("jax_compilation_cache_dir", _CACHE.value or str(pathlib.Path(_WORKDIR.value) / "xla_cache"))
  try:
    run(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
