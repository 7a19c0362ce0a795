"""ODE-pair generation (spec §4): the teacher's probability-flow ODE with CFG on the 48-step grid,
every block conditioned on the ground-truth history, stored as the pairs stage 2a regresses.

Records hold `ode_latents [6, F, H, W, C]` — the states at t = 1000, 937.5, 833.3 and 625, the
ODE endpoint and the clean latents — plus `prompt_embeds` and `index`. The noise of item i
depends only on (seed, i), so the data set is the same however it is split. Hosts write disjoint
shards, each host splits its batches over its devices, and a rerun after an interruption writes
only the missing shards.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cf_jax import checkpoint
from cf_jax.data import pipeline
from cf_jax.data import records
from cf_jax.diffusion import noise as noise_lib
from cf_jax.diffusion import teacher_sampling
from cf_jax.errors import UserError
from cf_jax.models import wan
from cf_jax.training import trainer
from cf_jax.training.stage import Network, build_model


def generate(config, out_dir: str):
  """Writes the ODE-pair dataset of `config` into `out_dir` (skipping finished shards)."""
  if config.teacher not in ("autoregressive", "bidirectional"):
    raise UserError(f"teacher {config.teacher!r}: choose 'autoregressive' or 'bidirectional'")
  checkpoint.check_writable(out_dir)
  source = pipeline.source(config.data, ("latents", "prompt_embeds"))  # before the teacher loads
  causal = config.teacher == "autoregressive"
  layout = wan.Layout.block_causal(config.frames_per_block) if causal else wan.Layout.bidirectional()
  teacher = Network(build_model(config, config.model), layout, config.init.generator, config.init.generator_entry)
  mesh = Mesh(np.array(jax.local_devices()), ("data",))
  params = trainer.initial_params(teacher, "teacher", config.data, config.seed, NamedSharding(mesh, P()))
  split = NamedSharding(mesh, P("data"))
  negative = trainer.negative_prompt_embeds(config.data)
  count = len(source) if not config.num_examples else min(config.num_examples, len(source))
  key = jax.random.key(config.seed)

  def encode_batch(indices, first):
    items = [source[i] for i in indices]
    pad = -len(items) % mesh.size  # whole batches for every device; the padding is dropped
    stack = lambda k: np.stack([it[k] for it in items] + [items[-1][k]] * pad)
    clean, cond = stack("latents"), stack("prompt_embeds")
    noise = np.stack([noise_lib.normal(jax.random.fold_in(key, first + j), clean.shape[1:])
                      for j in range(len(clean))])
    uncond = np.broadcast_to(negative, cond.shape)
    clean, cond, uncond, noise = (jax.device_put(a, split) for a in (clean, cond, uncond, noise))
    pairs = teacher_sampling.sample_ode_trajectory(
        teacher.model, params, noise, clean if causal else None, cond, uncond, layout, config.guidance_scale)
    # The last entry is always the ground truth (the stage-2a teacher-forcing context).
    pairs = jnp.concatenate([pairs[:, :-1], clean[:, None]], axis=1)
    pairs = np.asarray(pairs[: len(items)]).astype(config.output_dtype)
    return [{"index": first + j, "ode_latents": pairs[j], "prompt_embeds": np.asarray(items[j]["prompt_embeds"])}
            for j in range(len(items))]

  return records.write_sharded(
      out_dir, list(range(count)), encode_batch, config.items_per_shard, config.batch_size, "ODE pairs",
      metadata={"kind": "ode_pairs", "teacher": config.teacher, "guidance_scale": config.guidance_scale,
                "frames_per_block": config.frames_per_block},
  )
