"""The whole Causal Forcing recipe at toy scale, on a CPU, from nothing.

    python -m cf_jax.train --config configs/toy.py --workdir runs/toy

  data          bouncing-shapes videos made in code (`cf_jax.data.synthetic`), written as records
  teacher       a bidirectional DiT trained from scratch (stands in for Wan2.1)
  ar_diffusion  stage 1: the AR teacher, teacher forcing, initialized from the teacher
  ode_pairs     ODE trajectories of the AR teacher
  causal_ode    stage 2a: causal ODE regression, initialized from the AR teacher
  dmd           stage 3: asymmetric DMD (real score: the bidirectional teacher)
  samples       each model's videos, their distance to held-out real videos, a GIF

Every step is one of the real commands run in process with small settings, and each writes into
its own directory under the workdir; rerunning the recipe resumes (finished stages are skipped).
"""
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cf_jax import video_io
from cf_jax import video_metrics
from cf_jax import weights
from cf_jax.data import records
from cf_jax.data import synthetic
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import streaming
from cf_jax.diffusion import teacher_sampling
from cf_jax.models import wan
from cf_jax.training import config as base
from cf_jax.training import ode_pairs
from cf_jax.training.trainer import Trainer


def _shrink(c: ml_collections.ConfigDict, toy: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """A stage config at the toy's sizes (the rest of the stage's settings stay the reference's)."""
  c.model = toy.model
  c.frames_per_block = toy.frames_per_block
  c.seed = toy.seed
  c.batch_size = toy.batch_size
  c.compute_dtype = "float32"
  c.remat_policy = "none"
  c.data.update(kind="records", num_frames=toy.num_frames, latent_height=toy.height, latent_width=toy.width,
                channels=toy.channels, text_len=toy.text_len, text_dim=toy.text_dim)
  if "negative_prompt_embeds" in c.data:
    c.data.negative_prompt_embeds = toy.negative_prompt
  if "num_steps" in c:
    c.update(num_steps=steps, log_every=max(1, steps // 20), checkpoint_every=steps, keep_checkpoints=1)
    c.optimizer.lr = toy.lr
  if "bf16_timesteps" in c.get("quirks", {}):
    c.quirks.bf16_timesteps = False  # everything runs in float32 here
  return c


def stage_configs(toy: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, ml_collections.ConfigDict]:
  export = lambda stage, net="generator": str(workdir / stage / "export" / net)
  data = str(workdir / "data" / "train")

  teacher = _shrink(base.stage_config("ar_diffusion_framewise"), toy, toy.steps.teacher)
  teacher.update(causal=False)
  teacher.init.generator, teacher.data.path = "", data

  ar = _shrink(base.stage_config("ar_diffusion_framewise"), toy, toy.steps.ar_diffusion)
  ar.init.generator, ar.data.path = export("teacher"), data

  pairs = _shrink(base.stage_config("ode_data_framewise"), toy, 0)
  pairs.init.generator, pairs.data.path = export("ar_diffusion"), data
  pairs.update(num_examples=toy.ode_pairs, guidance_scale=toy.guidance_scale, batch_size=toy.batch_size,
               items_per_shard=toy.batch_size * 4, output_dtype="float32")

  ode = _shrink(base.stage_config("causal_ode_framewise"), toy, toy.steps.causal_ode)
  ode.init.generator, ode.data.path = export("ar_diffusion"), str(workdir / "ode_pairs")

  dmd = _shrink(base.stage_config("dmd_framewise"), toy, toy.steps.dmd)
  dmd.init.update(generator=export("causal_ode"), critic=export("teacher"), real_score=export("teacher"))
  dmd.data.path = data
  dmd.dmd.update(real_model=toy.model, critic_model=toy.model, dfake_gen_update_ratio=toy.dfake_gen_update_ratio)
  dmd.critic_optimizer.lr = toy.lr
  dmd.guidance_scale = toy.guidance_scale - 1.0  # x0_c + g·(x0_c − x0_u) is weight 1 + g
  dmd.ema.start_step = toy.steps.dmd // 2
  return {"teacher": teacher, "ar_diffusion": ar, "ode_pairs": pairs, "causal_ode": ode, "dmd": dmd}


def write_dataset(toy: ml_collections.ConfigDict, out: pathlib.Path, seed: int, count: int) -> None:
  """Bouncing-shapes videos with the embedding of their class as the prompt."""
  state = synthetic.make_videos_with_state(seed, count, toy.num_frames, toy.height, toy.width, toy.channels)
  videos = state["videos"]
  embeds, labels = synthetic.prompt_embeddings(state, toy.text_len, toy.text_dim, seed=toy.seed)  # one table

  def encode(items, first):
    return [{"index": i, "latents": videos[i], "prompt_embeds": embeds[i], "label": int(labels[i])} for i in items]

  records.write_sharded(out, list(range(count)), encode, items_per_shard=256, batch_size=64, description="videos",
                        metadata={"kind": "video_latents"})


def write_datasets(toy: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """data/train and the held-out data/eval under `workdir`, unless they are already written."""
  for split, seed, count in (("train", toy.seed, toy.num_train_videos), ("eval", toy.seed + 1, toy.num_eval_videos)):
    if not (workdir / "data" / split / records.MANIFEST).exists():
      write_dataset(toy, workdir / "data" / split, seed, count)


def load_videos(path: pathlib.Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Videos [N, F, H, W, C] and prompt embeddings [N, Lt, D] of a records directory (its first
  `count` records, or all)."""
  ds = records.dataset(path)
  items = [ds[i] for i in range(len(ds) if count is None else min(count, len(ds)))]
  return np.stack([r["latents"] for r in items]), np.stack([r["prompt_embeds"] for r in items])


def few_step_samples(toy: ml_collections.ConfigDict, export: pathlib.Path, context: jax.Array, noise: jax.Array,
                     key: jax.Array) -> np.ndarray:
  """4-step videos [N, F, H, W, C] of an exported causal student for the prompts context [N, Lt, D]."""
  cfg, params = weights.load_wan(export)
  few_step = streaming.FewStepConfig.from_step_count(toy.frames_per_block, 4, capacity_frames=toy.num_frames)
  sampler = streaming.StreamingSampler(wan.WanModel(cfg), params, few_step)
  return np.asarray(sampler.generate(jnp.asarray(context), noise, key))


def teacher_samples(toy: ml_collections.ConfigDict, export: pathlib.Path, causal: bool, context: jax.Array,
                    noise: jax.Array) -> np.ndarray:
  """Videos [N, F, H, W, C] of an exported multi-step teacher (toy.sampling_steps Euler steps): the
  AR one block by block (`causal`), the bidirectional one over the whole video."""
  cfg, params = weights.load_wan(export)
  context = jnp.asarray(context)
  negative = jnp.zeros_like(context)
  if causal:
    videos = teacher_sampling.sample_autoregressive(
        wan.WanModel(cfg), params, noise, context, negative, toy.frames_per_block, toy.guidance_scale, "euler",
        toy.sampling_steps)
  else:
    videos = teacher_sampling.sample_bidirectional(
        wan.WanModel(cfg), params, noise, context, negative, toy.guidance_scale, "euler", toy.sampling_steps)
  return np.asarray(videos)


def sample_all(toy, workdir: pathlib.Path, context: jax.Array, key: jax.Array) -> dict[str, np.ndarray]:
  """Videos [N, F, H, W, C] of every trained model for the prompts `context` [N, Lt, D]."""
  n = context.shape[0]
  noise = noise_lib.normal(key, (n, toy.num_frames, toy.height, toy.width, toy.channels))
  export = lambda stage, net="generator": workdir / stage / "export" / net
  out = {"teacher": teacher_samples(toy, export("teacher"), False, context, noise),
         "ar_diffusion": teacher_samples(toy, export("ar_diffusion"), True, context, noise)}
  for stage, net in (("causal_ode", "generator"), ("dmd", "generator_ema")):
    out[stage] = few_step_samples(toy, export(stage, net), context, noise, jax.random.fold_in(key, 1))
  return out


def write_gif(real: np.ndarray, generated: dict[str, np.ndarray], path: pathlib.Path, count: int = 6) -> None:
  """One row per source (real first), `count` videos side by side; channels 0–2 as RGB, each
  pixel drawn 8×8 so the 12×12 frames are visible."""
  rows = [real[:count]] + [v[:count] for v in generated.values()]
  frames = np.concatenate([np.concatenate(list(r), axis=2) for r in rows], axis=1)  # [F, rows·H, count·W, C]
  frames = np.repeat(np.repeat(frames[..., :3], 8, axis=1), 8, axis=2)
  video_io.write_gif(np.clip(frames / 2.5, -1.0, 1.0), path, fps=4)  # ±2.5 std to the colour range


def run(toy: ml_collections.ConfigDict, workdir: str) -> dict:
  start = time.perf_counter()
  workdir = pathlib.Path(workdir)
  write_datasets(toy, workdir)

  configs = stage_configs(toy, workdir)
  times = {}
  for stage, config in configs.items():
    print(f"== {stage}")
    tick = time.perf_counter()
    if stage == "ode_pairs":
      ode_pairs.generate(config, str(workdir / stage))
    else:
      Trainer(config, str(workdir / stage)).run()
    times[stage] = time.perf_counter() - tick

  print("== samples")
  real_videos, context = load_videos(workdir / "data" / "eval")
  generated = sample_all(toy, workdir, jnp.asarray(context), jax.random.key(toy.seed + 2))
  reference, _ = load_videos(workdir / "data" / "train", len(real_videos))
  distances = {"real (other videos)": video_metrics.video_distances(real_videos, reference)}
  distances.update({k: video_metrics.video_distances(real_videos, v) for k, v in generated.items()})
  write_gif(real_videos, generated, workdir / "samples.gif")
  summary = {"seconds": time.perf_counter() - start, "stage_seconds": times, "distances": distances}
  (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
  table = format_table(distances)
  (workdir / "summary.md").write_text(table + "\n")
  print(table)
  print(f"total {summary['seconds']:.0f} s; GIF {workdir / 'samples.gif'} (rows: real, " +
        ", ".join(generated) + ")")
  return summary


def format_table(distances: dict[str, dict[str, float]]) -> str:
  keys = list(next(iter(distances.values())))
  lines = ["| videos | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  lines += [f"| {name} | " + " | ".join(f"{d[k]:.4g}" for k in keys) + " |" for name, d in distances.items()]
  return "\n".join(lines)
