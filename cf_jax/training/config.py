"""What every training config shares, with the reference's defaults (spec: algorithms.md §9.2).

`base()` holds only the keys every stage reads (model, batch, optimizer, data, precision, mesh,
and the run's logging and checkpointing); each file in `configs/` starts from it and spells out
what makes its stage (initial weights, step lists, guidance, EMA, critic, the reference quirks it
reproduces). A key a stage does not read is not in its config, and the trainer locks the config,
so overriding such a key, or a misspelt one, is an error. `tiny()` shrinks any config to random
tiny models on synthetic data that run on a CPU in seconds.
"""
import importlib.util
import pathlib
from collections.abc import Callable

import ml_collections
from ml_collections import config_dict

from cf_jax import parallel
from cf_jax.errors import UserError

STAGES = ("ar_diffusion", "ode", "consistency", "dmd")
CONFIG_DIR = pathlib.Path(__file__).parents[2] / "configs"  # the stage files, beside the package

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
  if not path.is_file():
    raise UserError(f"config file {path} does not exist; the stage configs are in configs/ (e.g. "
                    "configs/ar_diffusion_chunkwise.py)")
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(variant)
  except UserError as e:
    raise UserError(f"{path}: {e}") from None


def select(variant: str, c: ml_collections.ConfigDict,
           **variants: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """`c` (no variant) or `variants[variant](c)`. An unknown variant is an error naming the valid
  ones, so a typo never silently runs the full config."""
  if not variant:
    return c
  if variant not in variants:
    raise UserError(f"unknown config variant {variant!r}; use no variant (the full config) or "
                    f"{' or '.join(':' + v for v in variants)}")
  return variants[variant](c)


def flat_keys(tree: dict, prefix: str = "") -> dict:
  """A nested config dict (e.g. `config.to_json_best_effort()` parsed) as {dotted key: value}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flat_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def optimizer(lr: float, b1: float = 0.0, b2: float = 0.999) -> ml_collections.ConfigDict:
  """AdamW with weight decay 0.01 and gradient clipping at 10, constant rate (reference)."""
  return ml_collections.ConfigDict(
      dict(lr=lr, b1=b1, b2=b2, eps=1e-8, weight_decay=0.01, max_grad_norm=10.0, warmup_steps=0)
  )


def stage_config(name: str, variant: str = "") -> ml_collections.ConfigDict:
  """`configs/<name>.py[:variant]`: what a config file derives from (the frame-wise files from the
  chunk-wise ones) and what code that runs stages itself loads (the toy recipe)."""
  return from_file(CONFIG_DIR / f"{name}.py", variant)


def init(**paths: str) -> ml_collections.ConfigDict:
  """Initial weights per network: a checkpoint path (empty: random init, tiny configs only) and
  `<name>_entry`, the entry of a training .pt (unset: the converter's default)."""
  c = ml_collections.ConfigDict()
  for name, path in paths.items():
    c[name] = path
    c[f"{name}_entry"] = config_dict.placeholder(str)
  return c


def data(path: str) -> ml_collections.ConfigDict:
  """The dataset keys every stage reads; CD, DMD and ODE-pair generation add the negative prompt's
  embedding (`negative_prompt_embeds`)."""
  return ml_collections.ConfigDict(dict(
      kind="records",  # 'records' (ArrayRecord directory) or 'synthetic'
      path=path,
      shuffle_seed=0,
      # Video shape in latents: the DMD rollout's noise, and the synthetic source.
      num_frames=21, latent_height=60, latent_width=104, channels=16,
      # Synthetic source only.
      num_examples=64, num_classes=4, text_len=512, text_dim=4096, seed=0,
  ))


def base(trainer: str, frames_per_block: int) -> ml_collections.ConfigDict:
  """The keys every stage reads; the stage files add their own."""
  c = ml_collections.ConfigDict()
  c.trainer = trainer  # one of STAGES
  c.frames_per_block = frames_per_block  # 3 chunk-wise, 1 frame-wise
  c.model = "t2v_1_3b"  # generator preset (cf_jax.models.config.PRESETS)
  c.seed = 0
  c.num_steps = 5000  # iterations (the reference loops until stopped; its README: 2K–10K)
  c.batch_size = 64  # global: 1 per GPU on the reference's 64 GPUs
  c.grad_accum = 1  # microbatches per update (the batch is split, gradients averaged)
  c.init = init(generator="")
  c.data = data("")
  c.optimizer = optimizer(lr=2e-6)

  c.compute_dtype = "bfloat16"  # parameters and optimizer state stay float32
  c.remat_policy = "full"  # none | full | dots | dots_no_batch
  c.attention_backend = "auto"  # auto (the platform's) | blocksparse (CPU) | xla | splash (TPU) | cudnn (GPU)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = parallel.DEFAULT_RULES

  # Reference behaviours that change numbers; each can be turned off (spec §11, §13). Every stage
  # reads snap_sigma; the stage files add bf16_timesteps (stage 1, CD) and snap_context_noise (DMD).
  c.quirks = ml_collections.ConfigDict(dict(
      snap_sigma=True,  # σ(t) from the nearest grid entry instead of t/1000
  ))

  # -- the run: logging, checkpoints, metrics (keys about running, not about the stage) --------
  c.log_every = 10
  c.checkpoint_every = 1000  # iterations; the last iteration is always saved
  c.keep_checkpoints = 3
  # A non-finite loss, gradient norm or state stops the run before it saves; True instead keeps
  # the state of before such an update and counts it (`<update>/skipped_updates`).
  c.skip_nonfinite_updates = False
  # Resuming with a config that differs from the workdir's config.json in more than num_steps,
  # logging, checkpointing and the mesh is refused unless this is True.
  c.allow_config_change = False
  c.tensorboard = True
  c.wandb = ml_collections.ConfigDict(dict(enabled=False, project="cf_jax", name=""))
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config shrunk to random tiny models on synthetic data: 2 CPU cores, seconds."""
  c.model = "tiny"
  c.batch_size = 8
  c.compute_dtype = "float32"
  c.remat_policy = "none"
  c.data.update(kind="synthetic", num_frames=6, latent_height=8, latent_width=8, channels=16,
                num_examples=16, num_classes=4, text_len=16, text_dim=64)
  if "negative_prompt_embeds" in c.data:
    c.data.negative_prompt_embeds = ""
  for name in c.init:
    if not name.endswith("_entry"):
      c.init[name] = ""
  if c.get("trainer"):  # a training stage (not ODE-pair generation)
    c.update(num_steps=2, log_every=1, checkpoint_every=1)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
  if "dmd" in c:
    c.dmd.update(real_model="tiny", critic_model="tiny")
  return c
