"""Causal Forcing's central claim on the toy recipe: ODE pairs from an AR teacher against ODE pairs
from a bidirectional teacher, everything else identical.

    python -m cf_jax.experiments.injectivity --config configs/injectivity.py --workdir runs/injectivity

A causal student's block b cannot see the noise of later frames. The AR teacher's ODE map
(teacher forcing on the ground-truth history) does not depend on it either, so ODE regression can
recover it; the bidirectional teacher's block b does depend on it, so the student can only regress
the average over that noise (a blurry target), and DMD starts from there. The experiment:

  teachers        the toy recipe's bidirectional `teacher` and AR `ar_diffusion` (initialized from
                  it), trained once under the workdir (or reused from a toy run:
                  --config.toy_workdir); the bidirectional one trained on from the same checkpoint
                  for as many steps as the AR one had (workdir/bidirectional_teacher), equal
                  budgets; the AR one trained on (workdir/ar_teacher) if its samples are not yet
                  at least as close to real videos as the bidirectional one's, or a budget runs out
  teacher maps    per teacher, around held-out noise videos z (each with a held-out video as
                  history and its prompt): the ODE endpoint from z, endpoints with only the noise
                  after block b redrawn, endpoints from independent noises. Non-injectivity of
                  block b: its spread under the redraws over its spread across independent noises
                  (0 for the AR teacher by construction)
  per seed, arm   ODE pairs from the arm's teacher (same videos, same noise), causal ODE
                  regression from the AR teacher, DMD from that, with identical settings; recorded:
                  the ODE loss floor; flow-map recovery (the ODE student's few-step output from
                  each z against its teacher's endpoint from z and against the teacher's
                  conditional mean, the average endpoint over the redrawn later noise); the
                  distances of 4-step samples to held-out real videos after ODE and after DMD

Outputs: results.json (every number), results.md (the table, also printed) and injectivity.png.
"""
import dataclasses
import json
import pathlib
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

from cf_jax import cli
from cf_jax import video_metrics
from cf_jax import weights
from cf_jax.data import records
from cf_jax.diffusion import flow_matching as fm
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import teacher_sampling
from cf_jax.errors import UserError
from cf_jax.models import wan
from cf_jax.recipes import toy as recipe
from cf_jax.training import ode_pairs
from cf_jax.training.denoiser import Denoiser
from cf_jax.training.trainer import Trainer

ARMS = ("autoregressive", "bidirectional")  # which teacher's ODE pairs the student regresses
COLORS = {"autoregressive": (31, 119, 180), "bidirectional": (230, 120, 20)}


# -- flow-map metrics (pure) ------------------------------------------------------------------------

def resampled_after_block(z: jax.Array, key: jax.Array, frames_per_block: int, resamples: int) -> jax.Array:
  """Noise videos [num_blocks, M, F, ...]: row b is z [F, ...] (e.g. [F, H, W, C]) with the frames
  after block b redrawn M times (the frames up to the end of block b kept)."""
  num_blocks = z.shape[0] // frames_per_block
  fresh = noise_lib.normal(key, (num_blocks, resamples, *z.shape), z.dtype)
  kept = jnp.arange(z.shape[0]) < frames_per_block * (jnp.arange(num_blocks)[:, None] + 1)  # [num_blocks, F]
  return jnp.where(kept.reshape(num_blocks, 1, -1, *(1,) * (z.ndim - 1)), z, fresh)


def block_variance(videos: np.ndarray, frames_per_block: int) -> np.ndarray:
  """Per-element variance across videos [M, F, ...] (ddof 1), averaged over each block: [num_blocks]."""
  var = np.var(np.asarray(videos, np.float64), axis=0, ddof=1)  # [F, ...]
  return var.reshape(var.shape[0] // frames_per_block, -1).mean(axis=1)


def block_sq_distance(a: np.ndarray, b: np.ndarray, frames_per_block: int) -> np.ndarray:
  """Mean squared difference of two videos [F, ...] over each block: [num_blocks]."""
  d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2  # [F, ...]
  return d.reshape(d.shape[0] // frames_per_block, -1).mean(axis=1)


def non_injectivity(redrawn: np.ndarray, free: np.ndarray, frames_per_block: int) -> np.ndarray:
  """How much block b of a teacher's ODE endpoint depends on the noise of later frames: [num_blocks].

  redrawn [num_blocks, M, F, ...]: endpoints from one noise video with the noise after block b
  redrawn (row b); free [M', F, ...]: endpoints from independent noise videos. The RMS spread of
  block b over row b, relative to its RMS spread over `free`. 0: block b is a function of its own
  and earlier noise (given the history), the map is injective block by block. The last block has
  no later frames, so its entry is 0 for any teacher."""
  spread = block_variance(free, frames_per_block)  # [num_blocks]
  within = np.array([block_variance(r, frames_per_block)[b] for b, r in enumerate(redrawn)])
  return np.sqrt(within / spread)


def flow_map_distances(student: np.ndarray, endpoint: np.ndarray, redrawn: np.ndarray, free: np.ndarray,
                       frames_per_block: int) -> dict[str, np.ndarray]:
  """How close a causal student's output student [F, ...] from a noise video z is to its teacher's
  ODE map, per block [num_blocks], in units of the RMS spread of the teacher's endpoints (`free`):

    to_endpoint           RMS distance to the teacher's endpoint from the same z (endpoint [F, ...])
    to_conditional_mean   RMS distance to the teacher's conditional mean of block b given the noise
                          up to block b: the mean of `redrawn[b]` (as in `non_injectivity`), its
                          sampling error (within-variance / M) subtracted from the squared distance

  Two independent draws of the teacher are sqrt(2) apart; a student that regresses the average
  over the later noise sits at 0 on to_conditional_mean and at `non_injectivity` on to_endpoint.
  """
  spread = block_variance(free, frames_per_block)  # [num_blocks]
  to_mean = []
  for b, rows in enumerate(redrawn):  # rows [M, F, ...]
    error = block_variance(rows, frames_per_block)[b] / len(rows)  # variance of the mean over M
    to_mean.append(max(block_sq_distance(student, rows.mean(axis=0), frames_per_block)[b] - error, 0.0))
  return {"to_endpoint": np.sqrt(block_sq_distance(student, endpoint, frames_per_block) / spread),
          "to_conditional_mean": np.sqrt(np.array(to_mean) / spread)}


# -- a teacher's ODE map and a student's few-step map --------------------------------------------

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


@dataclasses.dataclass(frozen=True)
class TeacherMap:
  """A teacher's ODE map sampled around Z noise videos, each with its (history, prompt) pair."""
  noise: np.ndarray  # [Z, F, H, W, C] the noise videos z
  endpoint: np.ndarray  # [Z, F, H, W, C] the endpoint from z
  redrawn: np.ndarray  # [Z, num_blocks, M, F, H, W, C] endpoints with the noise after block b redrawn
  free: np.ndarray  # [Z, M, F, H, W, C] endpoints from independent noise videos


def sample_teacher_map(model: wan.WanModel, params, layout: wan.Layout, clean: np.ndarray, cond: np.ndarray,
                       uncond: np.ndarray, key: jax.Array, frames_per_block: int, resamples: int = 8,
                       guidance_weight: float = 1.0, batch_size: int = 16) -> TeacherMap:
  """`TeacherMap` for the (history, prompt) pairs clean [Z, F, H, W, C], cond, uncond [Z, Lt, D]:
  per pair one noise video z, `resamples` redraws of the noise after each block and as many
  independent noise videos."""
  num_blocks = clean.shape[1] // frames_per_block
  maps = []
  for i in range(len(clean)):
    k_z, k_after, k_free = jax.random.split(jax.random.fold_in(key, i), 3)
    z = noise_lib.normal(k_z, clean.shape[1:])  # [F, H, W, C]
    after = resampled_after_block(z, k_after, frames_per_block, resamples)  # [num_blocks, M, F, H, W, C]
    free = noise_lib.normal(k_free, (resamples, *z.shape))  # [M, F, H, W, C]
    noise = jnp.concatenate([z[None], after.reshape(-1, *z.shape), free])
    ends = ode_endpoints(model, params, layout, noise, jnp.asarray(clean[i]), jnp.asarray(cond[i]),
                         jnp.asarray(uncond[i]), guidance_weight, batch_size)
    maps.append((np.asarray(z), ends[0], ends[1 : 1 + num_blocks * resamples].reshape(after.shape),
                 ends[1 + num_blocks * resamples :]))
  return TeacherMap(*(np.stack(a) for a in zip(*maps)))


def few_step_ode(model: wan.WanModel, params, frames_per_block: int, noise: jax.Array, clean: jax.Array,
                 context: jax.Array, timesteps: np.ndarray) -> np.ndarray:
  """A causal student's few-step output [B, F, H, W, C] from noise [B, F, H, W, C], every block
  given the ground-truth history clean [B, F, H, W, C] by teacher forcing (as its ODE regression
  trained it) and re-noised along its own predicted ODE (the noise x0 + flow, not fresh noise), so
  the output is a function of the noise: a student that recovered the teacher's map returns the
  teacher's endpoint from every step."""
  generator = Denoiser(model, wan.Layout.block_causal(frames_per_block))
  step = jax.jit(lambda p, x, t: generator.x0(p, x, jnp.full(x.shape[:2], t), context, clean_x=clean))
  x = noise
  for k, t in enumerate(timesteps):
    flow, x0 = step(params, x, jnp.float32(t))
    if k + 1 < len(timesteps):
      x = fm.add_noise(x0, x0 + flow, jnp.full(x.shape[:2], timesteps[k + 1]), generator.grid)
  return np.asarray(x0)


def teacher_layout(arm: str, frames_per_block: int) -> wan.Layout:
  return wan.Layout.block_causal(frames_per_block) if arm == "autoregressive" else wan.Layout.bidirectional()


def teacher_map(toy: ml_collections.ConfigDict, export: pathlib.Path, arm: str, clean: np.ndarray,
                cond: np.ndarray, key: jax.Array, resamples: int) -> TeacherMap:
  """`sample_teacher_map` of the arm's trained teacher, as its ODE pairs run it."""
  cfg, params = weights.load_wan(export)
  return sample_teacher_map(wan.WanModel(cfg), params, teacher_layout(arm, toy.frames_per_block), clean, cond,
                            np.zeros_like(cond), key, toy.frames_per_block, resamples, toy.guidance_scale,
                            toy.batch_size)


def student_flow_map(export: pathlib.Path, ode: ml_collections.ConfigDict, teacher: TeacherMap, clean: np.ndarray,
                     cond: np.ndarray) -> dict[str, list]:
  """`flow_map_distances` [Z, num_blocks] of an exported ODE student against its teacher's map."""
  cfg, params = weights.load_wan(export)
  timesteps = np.asarray(fm.warp_denoising_steps(ode.denoising_steps))
  student = few_step_ode(wan.WanModel(cfg), params, ode.frames_per_block, jnp.asarray(teacher.noise),
                         jnp.asarray(clean), jnp.asarray(cond), timesteps)  # [Z, F, H, W, C]
  rows = [flow_map_distances(s, e, r, f, ode.frames_per_block)
          for s, e, r, f in zip(student, teacher.endpoint, teacher.redrawn, teacher.free)]
  return {k: np.stack([r[k] for r in rows]).tolist() for k in rows[0]}


# -- matched teachers -------------------------------------------------------------------------------

def prepare_teachers(toy: ml_collections.ConfigDict, workdir: pathlib.Path, toy_workdir: str) -> pathlib.Path:
  """The directory with data/{train,eval} and the teacher and ar_diffusion exports: an existing toy
  run, or the workdir after writing the data and training both teachers there."""
  if toy_workdir:
    root = pathlib.Path(toy_workdir).absolute()
    needed = [root / "data" / s / records.MANIFEST for s in ("train", "eval")]
    needed += [root / s / "export" / "generator" for s in ("teacher", "ar_diffusion")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
      raise UserError(f"toy_workdir {root} is not a finished toy run: missing {', '.join(missing)}")
    return root
  recipe.write_datasets(toy, workdir)
  configs = recipe.stage_configs(toy, workdir)
  for stage in ("teacher", "ar_diffusion"):  # the AR teacher starts from the bidirectional one
    print(f"== {stage}")
    Trainer(configs[stage], str(workdir / stage)).run()
  return workdir


def at_least_as_good(a: dict[str, float], b: dict[str, float], tolerance: float) -> bool:
  """Whether distances `a` are each at most (1 + tolerance) times `b`'s (frame_fd and motion_fd)."""
  return all(a[k] <= (1 + tolerance) * b[k] for k in ("frame_fd", "motion_fd"))


def continue_bidirectional(toy: ml_collections.ConfigDict, root: pathlib.Path, workdir: pathlib.Path,
                           steps: int) -> pathlib.Path:
  """The bidirectional teacher trained on for `steps` more steps (under workdir/bidirectional_teacher)
  from the checkpoint the AR teacher was initialized from: with steps = the AR teacher's
  teacher-forcing steps, both teachers have had the same training from one checkpoint."""
  teacher = root / "teacher" / "export" / "generator"
  if steps == 0:
    return teacher
  config = recipe.stage_configs(toy, root)["teacher"]
  config.update(num_steps=steps, checkpoint_every=steps, log_every=max(1, steps // 10))
  config.init.generator = str(teacher)
  print(f"== bidirectional teacher: {steps} more steps")
  Trainer(config, str(workdir / "bidirectional_teacher")).run()
  return workdir / "bidirectional_teacher" / "export" / "generator"


def match_ar_teacher(toy: ml_collections.ConfigDict, root: pathlib.Path, workdir: pathlib.Path,
                     matching: ml_collections.ConfigDict, real: np.ndarray, context: np.ndarray
                     ) -> tuple[dict[str, pathlib.Path], dict]:
  """The two teachers' exports, the AR one trained on (teacher forcing, `matching.round_steps` at
  a time, at most `matching.max_rounds` times, under workdir/ar_teacher) until its samples are at
  least as close to the real videos [N, F, H, W, C] as the bidirectional teacher's on frame_fd and
  motion_fd, within `matching.tolerance`; and the record: both teachers' distances, every round's and whether they matched."""
  noise = noise_lib.normal(jax.random.key(toy.seed + 2), real.shape)  # one noise for every teacher
  score = lambda export, causal: video_metrics.video_distances(
      real, recipe.teacher_samples(toy, export, causal, context, noise))
  exports = {"bidirectional": continue_bidirectional(toy, root, workdir, matching.bidirectional_steps),
             "autoregressive": root / "ar_diffusion" / "export" / "generator"}
  bidirectional = {"extra_steps": matching.bidirectional_steps, **score(exports["bidirectional"], False)}
  rounds = [{"extra_steps": 0, **score(exports["autoregressive"], True)}]
  config = recipe.stage_configs(toy, root)["ar_diffusion"]
  config.update(checkpoint_every=matching.round_steps, log_every=max(1, matching.round_steps // 10))
  config.init.generator = str(exports["autoregressive"])
  for r in range(1, matching.max_rounds + 1):
    if at_least_as_good(rounds[-1], bidirectional, matching.tolerance):
      break
    print(f"== AR teacher: {matching.round_steps} more steps (round {r})")
    config.num_steps = r * matching.round_steps  # resumes from the last round's checkpoint
    Trainer(config, str(workdir / "ar_teacher")).run()
    exports["autoregressive"] = workdir / "ar_teacher" / "export" / "generator"
    rounds.append({"extra_steps": config.num_steps, **score(exports["autoregressive"], True)})
  record = {"bidirectional": bidirectional, "autoregressive": rounds[-1], "rounds": rounds,
            "matched": at_least_as_good(rounds[-1], bidirectional, matching.tolerance),
            "tolerance": matching.tolerance}
  return exports, record


# -- the two arms -----------------------------------------------------------------------------------

def arm_configs(toy: ml_collections.ConfigDict, root: pathlib.Path, run_dir: pathlib.Path, arm: str, seed: int,
                exports: dict[str, pathlib.Path]) -> dict[str, ml_collections.ConfigDict]:
  """The toy recipe's ode_pairs, causal_ode and dmd configs for one arm and seed: only the teacher
  of the pairs differs between arms (both students start from the AR teacher); the seed sets the
  pairs' noise, the init rng and data order."""
  configs = recipe.stage_configs(toy, root)
  pairs, ode, dmd = configs["ode_pairs"], configs["causal_ode"], configs["dmd"]
  pairs.update(teacher=arm, seed=seed)
  pairs.init.generator = str(exports[arm])
  ode.init.generator = str(exports["autoregressive"])
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
            exports: dict[str, pathlib.Path], real: np.ndarray, context: np.ndarray, teacher: TeacherMap,
            history: np.ndarray, floor_fraction: float) -> dict:
  """ODE pairs, causal ODE and DMD of one arm and seed; the ODE loss floor, the ODE student's
  `flow_map_distances` against its teacher's map (histories history [Z, F, H, W, C] with the
  prompts of the `teacher` map, here `context`'s first Z) and the distances of the 4-step samples
  to the real videos [N, F, H, W, C] after ODE and after DMD."""
  tick = time.perf_counter()
  configs = arm_configs(toy, root, run_dir, arm, seed, exports)
  ode_pairs.generate(configs["ode_pairs"], str(run_dir / "ode_pairs"))
  for stage in ("causal_ode", "dmd"):
    Trainer(configs[stage], str(run_dir / stage)).run()
  key = jax.random.fold_in(jax.random.key(toy.seed + 2), seed)  # the same for both arms
  noise = noise_lib.normal(jax.random.fold_in(key, 0), real.shape)
  sample = lambda stage, net: recipe.few_step_samples(toy, run_dir / stage / "export" / net, context, noise,
                                               jax.random.fold_in(key, 1))
  student = run_dir / "causal_ode" / "export" / "generator"
  return {
      "seed": seed,
      "ode_loss_floor": loss_floor(run_dir / "causal_ode" / "metrics.jsonl", floor_fraction),
      "flow_map": student_flow_map(student, configs["causal_ode"], teacher, history, context[: len(history)]),
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
FLOW_MAP = {"to_endpoint": "student to its teacher's endpoint",
            "to_conditional_mean": "student to the teacher's conditional mean"}


def mean_std(values) -> tuple[float, float]:
  """Mean and sample std (0 for a single value)."""
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summary(results: dict) -> dict[str, dict[str, tuple[float, float]]]:
  """Per arm, (mean, std): over seeds of every column and of each flow-map distance of block b
  (`<distance> <b>`, first averaged over the noise videos), the arm's teacher's distances
  (`teacher <metric>`, one value) and its non-injectivity of block b over the noise videos
  (`block <b>`)."""
  out = {}
  for arm in ARMS:
    runs = results["runs"][arm]
    out[arm] = {name: mean_std([get(r) for r in runs]) for name, get in COLUMNS.items()}
    out[arm].update({f"teacher {k}": mean_std([results["teachers"][arm][k]]) for k in ("frame_fd", "motion_fd")})
    per_block = np.asarray(results["non_injectivity"][arm])  # [Z, num_blocks]
    out[arm].update({f"block {b}": mean_std(per_block[:, b]) for b in range(per_block.shape[1])})
    for name in FLOW_MAP:
      per_seed = np.stack([np.asarray(r["flow_map"][name]).mean(axis=0) for r in runs])  # [seeds, num_blocks]
      out[arm].update({f"{name} {b}": mean_std(per_seed[:, b]) for b in range(per_seed.shape[1])})
  return out


def format_table(results: dict) -> str:
  """Two markdown tables (distances to real videos; flow-map recovery per block) and their notes."""
  stats = summary(results)
  blocks = [k.removeprefix("block ") for k in stats[ARMS[0]] if k.startswith("block ")]
  cell = lambda arm, key: "{:.4g} ± {:.2g}".format(*stats[arm][key])
  per_block = lambda arm, name: " / ".join("{:.2f} ± {:.2f}".format(*stats[arm][f"{name} {b}"]) for b in blocks)
  teachers = results["teachers"]
  lines = ["| ODE pairs from | ODE loss floor | frame_fd: teacher / after ODE / after DMD "
           "| motion_fd: teacher / after ODE / after DMD |", "|---|---|---|---|"]
  for arm in ARMS:
    fd = lambda m: " / ".join([f"{teachers[arm][m]:.4g}", cell(arm, f"{m} after ODE"), cell(arm, f"{m} after DMD")])
    lines.append(f"| {arm} teacher | {cell(arm, 'ODE loss floor')} | {fd('frame_fd')} | {fd('motion_fd')} |")
  lines += ["", f"| ODE pairs from (blocks {' / '.join(blocks)}) | teacher non-injectivity | "
            + " | ".join(FLOW_MAP.values()) + " |", "|---|---|---|---|"]
  for arm in ARMS:
    lines.append(f"| {arm} teacher | {per_block(arm, 'block')} | "
                 + " | ".join(per_block(arm, name) for name in FLOW_MAP) + " |")
  reference, ar = results["real_reference"], teachers["autoregressive"]
  lines += ["", f"Mean ± std over seeds {results['seeds']} (teacher columns: one teacher each; "
            "non-injectivity: ± std over the noise videos). Distances to real: multi-step teachers and 4-step "
            "students against held-out real videos (real against other real videos: frame_fd "
            f"{reference['frame_fd']:.3g}, motion_fd {reference['motion_fd']:.3g}). The AR teacher had "
            f"{ar['extra_steps']} teacher-forcing steps beyond the toy recipe's, the bidirectional one "
            f"{teachers['bidirectional'].get('extra_steps', 0)} more steps of its own training from the checkpoint "
            "the AR one started from; the AR teacher is "
            f"{'' if teachers['matched'] else 'NOT '}at least as close to real videos as the bidirectional one "
            f"on both distances (within {teachers['tolerance']:.0%}). Flow map, per block, in units of the RMS spread of the teacher's endpoints "
            "(independent draws are 1.41 apart): the ODE student's 4-step output (teacher-forced history, "
            "deterministic re-noising) from held-out noise against its own teacher's ODE endpoint from the same "
            "noise, and against the teacher's mean endpoint over redrawn later-frame noise; non-injectivity: the "
            "teacher's RMS spread under those redraws."]
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
  """Loss floor, distances to real videos (the teacher, after ODE, after DMD; mean ± std over
  seeds), the teachers' non-injectivity per block (± std over noise videos) and the students'
  flow-map distances per block (mean ± std over seeds), one panel each."""
  stats = summary(results)
  blocks = [k.removeprefix("block ") for k in stats[ARMS[0]] if k.startswith("block ")]
  stages = [("teacher", "teacher {}"), ("after ODE", "{} after ODE"), ("after DMD", "{} after DMD")]
  panels = [
      ("ODE regression loss floor", [("", "ODE loss floor")]),
      ("frame_fd to real videos", [(label, key.format("frame_fd")) for label, key in stages]),
      ("motion_fd to real videos", [(label, key.format("motion_fd")) for label, key in stages]),
      ("teacher non-injectivity", [(f"block {b}", f"block {b}") for b in blocks]),
      ("student to teacher's endpoint", [(f"block {b}", f"to_endpoint {b}") for b in blocks]),
      ("student to conditional mean", [(f"block {b}", f"to_conditional_mean {b}") for b in blocks]),
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
  train, _ = recipe.load_videos(root / "data" / "train", len(real))
  if config.num_noises > len(real):
    raise ValueError(f"num_noises {config.num_noises} exceeds the {len(real)} held-out videos")
  print("== matching the teachers")
  exports, teachers = match_ar_teacher(toy, root, workdir, config.ar_teacher, real, context)
  results = {"config": json.loads(config.to_json_best_effort()), "seeds": list(config.seeds),
             "real_reference": video_metrics.video_distances(real, train),
             "teachers": teachers, "non_injectivity": {}, "runs": {arm: [] for arm in ARMS}}
  history = real[: config.num_noises]  # the flow maps' held-out (history, prompt) pairs
  maps = {}
  for arm in ARMS:
    print(f"== ODE map of the {arm} teacher")
    maps[arm] = teacher_map(toy, exports[arm], arm, history, context[: config.num_noises],
                            jax.random.key(config.noise_seed), config.resamples)  # the same z for both
    results["non_injectivity"][arm] = [non_injectivity(r, f, toy.frames_per_block).tolist()
                                       for r, f in zip(maps[arm].redrawn, maps[arm].free)]
  for seed in config.seeds:
    for arm in ARMS:
      print(f"== seed {seed}: ODE pairs from the {arm} teacher")
      run_dir = workdir / f"seed{seed}" / arm
      results["runs"][arm].append(run_arm(toy, root, run_dir, arm, seed, exports, real, context, maps[arm],
                                          history, config.floor_fraction))
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
  # Every arm and seed compiles the same programs again (each Trainer jits its own steps); the
  # persistent cache turns the repeats into disk reads.
  jax.config.update("jax_compilation_cache_dir", _CACHE.value or str(pathlib.Path(_WORKDIR.value) / "xla_cache"))
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main, config_flag="config")
