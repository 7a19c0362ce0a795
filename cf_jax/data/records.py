"""Datasets as ArrayRecord shards that grain reads: writing (sharded over hosts, resumable) and reading.

A record is a dict of numpy arrays, strings and ints, serialized with msgpack (arrays as dtype,
shape and raw bytes; bfloat16 included). A dataset directory holds shards
`shard-NNNNN-of-MMMMM.array_record`, each covering a fixed, contiguous range of the input items,
and a `manifest.json` once every shard exists. A shard is written under a temporary name and
renamed when complete, so after an interruption a rerun finds every finished shard intact, skips
it, and writes only the missing ones: no duplicates and no gaps. SIGTERM/SIGINT stop the writer
at the next batch: the unfinished shard's temporary file is deleted and `Preempted` raised.
"""
import json
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
from jax.experimental import multihost_utils
import ml_dtypes
import msgpack
import numpy as np
import tqdm
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from cf_jax.errors import UserError

from cf_jax.training import preemption

_EXTRA_DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16)}
MANIFEST = "manifest.json"


def serialize(record: dict[str, Any]) -> bytes:
  def pack(value):
    if isinstance(value, (np.ndarray, np.generic)):
      value = np.ascontiguousarray(value)
      return {"dtype": value.dtype.name, "shape": list(value.shape), "data": value.tobytes()}
    return value

  return msgpack.packb({k: pack(v) for k, v in record.items()}, use_bin_type=True)


def deserialize(data: bytes) -> dict[str, Any]:
  def unpack(value):
    if isinstance(value, dict) and set(value) == {"dtype", "shape", "data"}:
      dtype = _EXTRA_DTYPES.get(value["dtype"], None) or np.dtype(value["dtype"])
      return np.frombuffer(value["data"], dtype).reshape(value["shape"])
    return value

  return {k: unpack(v) for k, v in msgpack.unpackb(data, raw=False).items()}


def shard_name(index: int, count: int) -> str:
  return f"shard-{index:05d}-of-{count:05d}.array_record"


def write_sharded(
    out_dir: str | os.PathLike,
    items: Sequence[Any],
    encode_batch: Callable[[Sequence[Any], int], list[dict[str, Any]]],
    items_per_shard: int,
    batch_size: int,
    description: str,
    metadata: dict[str, Any] | None = None,
) -> pathlib.Path:
  """Encodes `items` into shards; this host writes shards i with i % process_count == process_index.

  `encode_batch(batch, first_index)` returns one record per item. Finished shards are skipped, so
  an interrupted run can simply be started again.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  count = max(1, -(-len(items) // items_per_shard))
  mine = [i for i in range(count) if i % jax.process_count() == jax.process_index()]
  todo = [i for i in mine if not (out / shard_name(i, count)).exists()]
  progress = tqdm.tqdm(total=sum(min(items_per_shard, len(items) - i * items_per_shard) for i in todo),
                       desc=description, unit="item", disable=jax.process_index() != 0)
  with preemption.Signals() as signals:
    for done, shard in enumerate(todo):
      first, last = shard * items_per_shard, min((shard + 1) * items_per_shard, len(items))
      final = out / shard_name(shard, count)
      tmp = final.with_name(f".{final.name}.tmp")
      writer = ArrayRecordWriter(str(tmp), "group_size:1")
      stopped = False
      try:
        for start in range(first, last, batch_size):
          stopped = signals.requested is not None
          if stopped:
            break
          batch = items[start : min(start + batch_size, last)]
          for record in encode_batch(batch, start):
            writer.write(serialize(record))
          progress.update(len(batch))
      finally:
        writer.close()
      if stopped:
        tmp.unlink()
        progress.close()
        raise preemption.Preempted(f"stopped by {signals.requested.name} with {done} of this host's {len(todo)} "
                                   f"missing shards written to {out}; run the same command to write the rest")
      os.replace(tmp, final)
  progress.close()
  if jax.process_count() > 1:  # every host's shards are on disk before process 0 looks
    multihost_utils.sync_global_devices(f"write_sharded:{out}")
  if all((out / shard_name(i, count)).exists() for i in range(count)) and jax.process_index() == 0:
    manifest = {"num_records": len(items), "num_shards": count, "items_per_shard": items_per_shard, **(metadata or {})}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
  return out


def shard_paths(directory: str | os.PathLike) -> list[str]:
  directory = pathlib.Path(directory)
  paths = sorted(str(p) for p in directory.glob("shard-*.array_record"))
  if not paths:
    raise UserError(f"{directory} holds no shard-*.array_record files; write the dataset first")
  if not (directory / MANIFEST).exists():
    raise UserError(f"{directory} is incomplete (no {MANIFEST}); rerun the command that writes it to finish")
  return paths


def _corrupt(shard: str, error: Exception) -> UserError:
  reason = str(error).splitlines()[0] if str(error) else "unreadable"
  return UserError(f"shard {shard} is corrupt ({reason}); delete it and rerun the command that wrote "
                   f"{pathlib.Path(shard).parent} (it writes only the missing shards)")


def dataset(directory: str | os.PathLike) -> grain.MapDataset:
  """Random-access grain dataset of the decoded records, in item order. A shard that cannot be
  read is named, when the dataset is opened (a damaged footer) or when its record is read."""
  paths = shard_paths(directory)
  try:
    source = grain.sources.ArrayRecordDataSource(paths)
  except RuntimeError:  # the reader does not say which file; open them one by one to find it
    for path in paths:
      try:
        ArrayRecordReader(path).close()
      except RuntimeError as e:
        raise _corrupt(path, e) from None
    raise
  items_per_shard = json.loads((pathlib.Path(directory) / MANIFEST).read_text())["items_per_shard"]

  def read(index: int) -> dict[str, Any]:
    try:
      return deserialize(source[index])
    except RuntimeError as e:
      raise _corrupt(paths[index // items_per_shard], e) from None

  return grain.MapDataset.range(len(source)).map(read)


def iterate(directory: str | os.PathLike) -> Iterator[dict[str, Any]]:
  yield from dataset(directory)
