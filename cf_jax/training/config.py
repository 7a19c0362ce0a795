"""The keys every training config has, with the reference's defaults (spec: algorithms.md §9.2).

Stage files in `configs/` start from `base()` and set what differs; `tiny()` shrinks a config to
a random-initialized tiny model on synthetic data that runs on a CPU in seconds. The trainer locks
the config, so a misspelt override is an error.
"""
import importlib.util
import pathlib

import ml_collections
from ml_collections import config_dict

from cf_jax import parallel

STAGES = ("ar_diffusion", "ode", "consistency", "dmd")

# The negative prompt of every stage (spec §2.2); `data.negative_prompt_embeds` holds its
# embedding, written by `python -m cf_jax.encode_prompts`.
NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，"
    "杂乱的背景，三条腿，背景人很多，倒着走"
)


def from_file(path: str | pathlib.Path, variant: str = "") -> ml_collections.ConfigDict:
  """`get_config(variant)` of a config file, as `--config path[:variant]` loads it (configs/ is a
  directory of files, not a package)."""
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def optimizer(lr: float, b1: float = 0.0, b2: float = 0.999) -> ml_collections.ConfigDict:
  """AdamW with weight decay 0.01 and gradient clipping at 10, constant rate (reference)."""
  return ml_collections.ConfigDict(
      dict(lr=lr, b1=b1, b2=b2, eps=1e-8, weight_decay=0.01, max_grad_norm=10.0, warmup_steps=0)
  )


def base(trainer: str, frames_per_block: int) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = trainer  # one of STAGES
  c.frames_per_block = frames_per_block  # 3 chunk-wise, 1 frame-wise
  c.causal = True  # stage 1 only: False trains a bidirectional model (no teacher forcing)
  c.model = "t2v_1_3b"  # generator preset (cf_jax.models.config.PRESETS)
  c.seed = 0
  c.num_steps = 5000  # iterations (the reference loops until stopped; its README: 2K–10K)
  c.batch_size = 64  # global: 1 per GPU on the reference's 64 GPUs
  c.grad_accum = 1  # microbatches per update (the batch is split, gradients averaged)
  c.denoising_steps = (1000, 750, 500, 250)  # unwarped few-step list (ODE, DMD)
  c.guidance_scale = 3.0  # CFG of the consistency teacher and of the DMD real score
  c.noise_augmentation_max_timestep = 0  # stage 1 context noise augmentation (0: off)

  c.init = ml_collections.ConfigDict()
  for name in ("generator", "teacher", "critic", "real_score"):
    c.init[name] = ""  # checkpoint path; empty: random init (tiny configs only)
    c.init[f"{name}_entry"] = config_dict.placeholder(str)  # entry of a training .pt

  c.data = ml_collections.ConfigDict(dict(
      kind="records",  # 'records' (ArrayRecord directory) or 'synthetic'
      path="",
      negative_prompt_embeds="",  # .npy [Lt, D_text], an encode_prompts directory (its first record) or 'zeros'
      shuffle_seed=0,
      # Video shape in latents: the DMD rollout's noise, and the synthetic source.
      num_frames=21, latent_height=60, latent_width=104, channels=16,
      # Synthetic source only.
      num_examples=64, num_classes=4, text_len=512, text_dim=4096, seed=0,
  ))

  c.optimizer = optimizer(lr=2e-6)
  c.ema = ml_collections.ConfigDict(dict(decay=0.99, start_step=200))

  c.compute_dtype = "bfloat16"  # parameters and optimizer state stay float32
  c.remat_policy = "full"  # none | full | dots | dots_no_batch
  c.attention_backend = "auto"  # auto (the platform's) | blocksparse (CPU) | xla | splash (TPU) | cudnn (GPU)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = parallel.DEFAULT_RULES

  # Reference behaviours that change numbers; each can be turned off (spec §11, §13).
  c.quirks = ml_collections.ConfigDict(dict(
      snap_sigma=True,  # σ(t) from the nearest grid entry instead of t/1000
      bf16_timesteps=True,  # stage 1 and CD round sampled timesteps to bfloat16
      snap_context_noise=True,  # DMD cache refresh at t = 0 uses σ = 0.00498, not 0
  ))

  c.log_every = 10
  c.checkpoint_every = 1000  # iterations; the last iteration is always saved
  c.keep_checkpoints = 3
  c.tensorboard = True
  c.wandb = ml_collections.ConfigDict(dict(enabled=False, project="cf_jax", name=""))
  return c


LAYOUTS = {"chunkwise": 3, "framewise": 1}


def ar_diffusion(layout: str) -> ml_collections.ConfigDict:
  """Stage 1 from the bidirectional Wan2.1-T2V-1.3B weights (ar_diffusion_tf_<layout>.yaml)."""
  c = base("ar_diffusion", LAYOUTS[layout])
  c.init.generator = "wan_models/Wan2.1-T2V-1.3B"
  c.data.path = "data/latents"  # encode_videos output, with prompt embeddings
  c.ema.start_step = 2_000_000_000  # stage 1 keeps no EMA
  return c


def causal_ode(layout: str) -> ml_collections.ConfigDict:
  """Stage 2a from the stage-1 export, on its ODE pairs (causal_ode_<layout>.yaml)."""
  c = base("ode", LAYOUTS[layout])
  c.init.generator = f"runs/ar_diffusion_{layout}/export/generator"
  c.data.path = f"data/ode_pairs_{layout}"  # generate_ode_data output
  c.optimizer = optimizer(lr=2e-6, b1=0.9)  # the one stage with beta1 0.9
  return c


def ode_data(layout: str) -> ml_collections.ConfigDict:
  """ODE-pair generation with the stage-1 AR teacher (get_causal_ode_data_<layout>.py): CFG 6 on
  the 48-step grid, each block conditioned on the ground-truth history."""
  c = ml_collections.ConfigDict()
  c.frames_per_block = LAYOUTS[layout]
  c.model = "t2v_1_3b"
  c.teacher = "autoregressive"  # or 'bidirectional': the Self Forcing-style teacher, for comparison
  c.init = ml_collections.ConfigDict(dict(generator=f"runs/ar_diffusion_{layout}/export/generator",
                                          generator_entry=config_dict.placeholder(str)))
  c.guidance_scale = 6.0  # the scripts' argparse default (spec §11.1), not the configs' 3.0
  c.seed = 0
  c.batch_size = 8  # videos per teacher call on this host (split over its devices)
  c.items_per_shard = 64
  c.num_examples = 0  # 0: every record of data.path
  c.output_dtype = "float16"  # the reference's LMDB stores fp16
  c.compute_dtype = "float32"  # the reference runs the teacher in fp32
  c.attention_backend = "auto"
  c.remat_policy = "none"
  c.data = base("ode", 1).data
  c.data.path = "data/latents"
  c.data.negative_prompt_embeds = "data/negative_prompt"
  return c


def causal_cd(layout: str) -> ml_collections.ConfigDict:
  """Stage 2b (Causal Forcing++): student, EMA target and teacher all from the stage-1 export
  (causal_cd_<layout>.yaml). The EMA runs from step 0."""
  c = base("consistency", LAYOUTS[layout])
  c.init.generator = c.init.teacher = f"runs/ar_diffusion_{layout}/export/generator"
  c.data.path = "data/latents"
  c.data.negative_prompt_embeds = "data/negative_prompt"
  c.guidance_scale = 3.0  # teacher CFG on flow: v_u + 3·(v_c − v_u)
  return c


def dmd(layout: str, init: str) -> ml_collections.ConfigDict:
  """Stage 3 (causal_forcing_dmd_<layout>.yaml): the generator from `init`, the fake score from
  Wan 1.3B, the frozen real score Wan 14B; data: prompt embeddings only."""
  c = base("dmd", LAYOUTS[layout])
  c.init.generator = init
  c.init.critic = "wan_models/Wan2.1-T2V-1.3B"
  c.init.real_score = "wan_models/Wan2.1-T2V-14B"
  c.data.path = "data/prompt_embeds"  # encode_prompts output
  c.data.negative_prompt_embeds = "data/negative_prompt"
  c.critic_optimizer = optimizer(lr=4e-7)
  c.guidance_scale = 3.0  # real score CFG on x0: x0_c + 3·(x0_c − x0_u)
  c.num_steps = 1000  # the reference README: ≤1K iterations at batch 64
  c.checkpoint_every = 250
  c.dmd = ml_collections.ConfigDict(dict(
      real_model="t2v_14b",
      critic_model="t2v_1_3b",
      dfake_gen_update_ratio=5,  # critic updates per generator update
      # 1-/2-step models run the 4-step list on the first block (spec §7.6).
      first_block_denoising_steps=config_dict.placeholder(tuple),
      context_noise=0.0,  # timestep of the rollout's cache-refresh pass
      timestep_shift=5.0,  # DMD/critic timestep: 1000·S(u/1000), clamped to [min_step, max_step]
      min_step=20,
      max_step=980,
  ))
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config shrunk to random tiny models on synthetic data: 2 CPU cores, seconds."""
  c.model = "tiny"
  c.batch_size = 8
  c.compute_dtype = "float32"
  c.remat_policy = "none"
  c.data.update(kind="synthetic", num_frames=6, latent_height=8, latent_width=8, channels=16,
                num_examples=16, num_classes=4, text_len=16, text_dim=64, negative_prompt_embeds="")
  for name in c.init:
    if not name.endswith("_entry"):
      c.init[name] = ""
  if c.get("trainer"):  # a training stage (not ODE-pair generation)
    c.update(num_steps=2, log_every=1, checkpoint_every=1)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
  if "dmd" in c:
    c.dmd.update(real_model="tiny", critic_model="tiny")
  return c
