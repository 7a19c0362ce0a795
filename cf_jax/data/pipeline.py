"""Training input pipelines: grain datasets of records, sharded per host, batched, checkpointable.

Every stage reads dicts of arrays:

  latents        [F, H, W, C]     clean video latents (stage 1, consistency distillation)
  ode_latents    [6, F, H, W, C]  ODE pairs: states at t = 1000, 937.5, 833.3, 625, the ODE
                                  endpoint and the clean latents (stage 2a)
  prompt_embeds  [Lt, D_text]     text embeddings (every stage; DMD reads nothing else)

from ArrayRecord directories written by `encode_videos`, `generate_ode_data` or `encode_prompts`
(`kind = 'records'`), or from a synthetic source made in code (`kind = 'synthetic'`: Gaussian
latents and one random embedding per class, for tests and smoke runs). Each host reads every
`process_count`-th record, shuffles with a seed, repeats forever and batches; the iterator's state
is a small dict that goes into the training checkpoint, so a resumed run continues the same
sequence.
"""
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from cf_jax.data import records
from cf_jax.errors import UserError

FIELDS = ("latents", "ode_latents", "prompt_embeds")
ODE_PAIR_ENTRIES = 6


def _select(fields: Sequence[str], source: str):
  def select(record: dict[str, Any]) -> dict[str, np.ndarray]:
    missing = [f for f in fields if f not in record]
    if missing:
      raise UserError(f"{source}: records lack {missing} (they hold {sorted(record)}); "
                       f"write the dataset this stage reads (see the README's data section)")
    return {f: np.asarray(record[f], np.float32) for f in fields}

  return select


def synthetic_record(index: int, cfg: ml_collections.ConfigDict, fields: Sequence[str]) -> dict[str, np.ndarray]:
  """A deterministic random record: standard-normal latents and the embedding of one of
  `cfg.num_classes` classes (so conditioning has something to learn)."""
  rng = np.random.default_rng([cfg.seed, index])
  shape = (cfg.num_frames, cfg.latent_height, cfg.latent_width, cfg.channels)
  label = index % cfg.num_classes
  out = {}
  if "latents" in fields:
    out["latents"] = rng.standard_normal(shape, np.float32)
  if "ode_latents" in fields:
    out["ode_latents"] = rng.standard_normal((ODE_PAIR_ENTRIES, *shape), np.float32)
  if "prompt_embeds" in fields:
    out["prompt_embeds"] = np.random.default_rng([cfg.seed, 10**6 + label]).standard_normal(
        (cfg.text_len, cfg.text_dim), np.float32)
  return out


def source(cfg: ml_collections.ConfigDict, fields: Sequence[str]) -> grain.MapDataset:
  """The records of `cfg` (a config's `data` section) as a random-access dataset of `fields`."""
  if cfg.kind == "records":
    if not cfg.path:
      raise UserError("data.path is empty: set --config.data.path to a dataset directory")
    return records.dataset(cfg.path).map(_select(fields, cfg.path))
  if cfg.kind == "synthetic":
    return grain.MapDataset.range(cfg.num_examples).map(lambda i: synthetic_record(int(i), cfg, fields))
  raise UserError(f"data.kind {cfg.kind!r}: choose 'records' or 'synthetic'")


def host_batches(ds: grain.MapDataset, host_batch_size: int, seed: int) -> grain.DatasetIterator:
  """This host's share of `ds`, shuffled, repeated forever, in batches of `host_batch_size`."""
  mine = ds[jax.process_index() :: jax.process_count()]
  if len(mine) < host_batch_size:
    raise UserError(f"this host holds {len(mine)} records, fewer than its batch of {host_batch_size}")
  batches = mine.seed(seed).shuffle().repeat().batch(host_batch_size, drop_remainder=True)
  # grain's default read-ahead (500 elements, 16 threads) is sized for KiB records; ours are batches
  # of video latents, and reading 500 of them ahead costs host memory and, on a small host, the CPU
  # the training step needs. A few batches ahead hide the reads behind a step.
  return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)))
