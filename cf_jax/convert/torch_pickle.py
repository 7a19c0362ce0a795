"""Reading and writing `torch.save` files without torch, and without running code from them.

A `.pt`/`.pth` file (PyTorch ≥ 1.6) is a zip archive: `<name>/data.pkl` pickles the object tree and
refers to tensor storages by key, whose raw little-endian bytes are `<name>/data/<key>`. The
pickle is read by an unpickler that knows only what a state dict needs — dicts, `OrderedDict`,
the storage classes of numeric dtypes and the two tensor-rebuild functions — and refuses every
other global, so a malicious checkpoint cannot call anything. Tensors come back as numpy arrays
(bfloat16 as `ml_dtypes.bfloat16`). The writer emits the same records, opcode by opcode, so
`torch.load` reads its files as its own.
"""
import collections
import os
import pathlib
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from cf_jax.convert.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "DoubleStorage": np.float64,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
  """Stands in for `torch.<X>Storage`: only its dtype matters."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  """`torch._utils._rebuild_tensor_v2` for numpy: a strided view of the storage, copied."""
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if any(n == 0 for n in size):
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if storage_offset < 0 or last >= storage.size or min(stride, default=0) < 0:
    raise CheckpointError(f"a tensor of size {size} at offset {storage_offset} overruns its storage "
                          f"of {storage.size} elements; the file is corrupt")
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False
  )
  return np.array(view)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
  del requires_grad, backward_hooks, unused
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str, byteorder: str):
    super().__init__(file)
    self._archive, self._prefix, self._source, self._byteorder = archive, prefix, source, byteorder
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise CheckpointError(
        f"{self._source}: refusing to load '{module}.{name}' from the pickle: only tensors and dicts "
        "are allowed (is this a plain state dict from a trusted source?)"
    )

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
      raise CheckpointError(f"{self._source}: unsupported persistent record {pid!r:.80}")
    _, storage_type, key, _, numel = pid
    if key not in self._storages:  # read each storage once, however many tensors view it
      try:
        raw = self._archive.read(f"{self._prefix}data/{key}")
      except KeyError:
        raise CheckpointError(f"{self._source}: storage {key} is missing from the archive; the file is "
                              "incomplete") from None
      dtype = storage_type.dtype.newbyteorder(">" if self._byteorder == "big" else "<")
      if len(raw) < numel * dtype.itemsize:
        raise CheckpointError(f"{self._source}: storage {key} holds {len(raw)} bytes, {numel} elements "
                              "need more; the file is truncated")
      self._storages[key] = np.frombuffer(raw, dtype, count=numel).astype(storage_type.dtype)
    return self._storages[key]


def load_torch_file(path: str | os.PathLike) -> Any:
  """The object saved by `torch.save`, with numpy arrays in place of tensors."""
  source = os.fspath(path)
  if not os.path.isfile(source):
    raise CheckpointError(f"{source} does not exist")
  if not zipfile.is_zipfile(source):
    raise CheckpointError(f"{source} is not a zip-format torch checkpoint (truncated, or saved by torch < 1.6 "
                          "or with _use_new_zipfile_serialization=False; re-save it with a current torch)")
  try:
    with zipfile.ZipFile(source) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
      if len(pickles) != 1:
        raise CheckpointError(f"{source}: expected one <name>/data.pkl in the archive, found {len(pickles)}")
      prefix = pickles[0][: -len("data.pkl")]
      names = set(archive.namelist())
      byteorder = archive.read(f"{prefix}byteorder").decode().strip() if f"{prefix}byteorder" in names else "little"
      with archive.open(pickles[0]) as f:
        return _RestrictedUnpickler(f, archive, prefix, source, byteorder).load()
  except CheckpointError:
    raise
  except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"{source} is corrupt or truncated ({type(e).__name__}: {e})") from None


_STORAGE_NAMES = {np.dtype(dtype): name for name, dtype in _STORAGE_DTYPES.items()}


def _global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
  data = s.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
  return pickle.BININT + struct.pack("<i", i)


def _tuple(items: list[bytes]) -> bytes:
  return pickle.MARK + b"".join(items) + pickle.TUPLE


class TorchPickleWriter:
  """Pickle opcodes (protocol 2) of a tree of mappings and arrays, laid out as torch.save lays a
  state dict: each tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
  False, OrderedDict())`, its storage the persistent id `('storage', torch.<X>Storage, key,
  'cpu', numel)` whose bytes go to `data/<key>`."""

  def __init__(self):
    self.storages: dict[int, tuple[str, np.ndarray]] = {}  # id(flat storage) -> (key, storage)

  def value(self, obj) -> bytes:
    if isinstance(obj, Mapping):
      items = b"".join(_str(k) + self.value(v) for k, v in obj.items())
      return (_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK + items
              + pickle.SETITEMS)
    if isinstance(obj, np.ndarray):
      array = np.ascontiguousarray(obj)
      strides = tuple(s // array.itemsize for s in array.strides)
      return self.tensor(array.reshape(-1), 0, array.shape, strides)
    raise TypeError(f"cannot write {type(obj).__name__} into a torch file (only mappings and arrays)")

  def tensor(self, storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    if storage.dtype not in _STORAGE_NAMES:
      raise TypeError(f"torch has no storage for dtype {storage.dtype}")
    key = self.storages.setdefault(id(storage), (str(len(self.storages)), storage))[0]
    persistent_id = _tuple([_str("storage"), _global("torch", _STORAGE_NAMES[storage.dtype]), _str(key), _str("cpu"),
                            _int(storage.size)]) + pickle.BINPERSID
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    args = _tuple([persistent_id, _int(offset), _tuple([_int(n) for n in size]), _tuple([_int(s) for s in stride]),
                   pickle.NEWFALSE, hooks])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def save_torch_file(obj, path: str | os.PathLike, archive: str = "archive", writer: TorchPickleWriter | None = None) -> None:
  """Writes `obj` (nested mappings of numpy arrays) as `torch.save` would, atomically: into a
  temporary file beside `path`, renamed when complete."""
  writer = writer or TorchPickleWriter()
  data = pickle.PROTO + bytes([2]) + writer.value(obj) + pickle.STOP
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    with zipfile.ZipFile(tmp, "w") as z:  # stored uncompressed, as torch writes
      z.writestr(f"{archive}/data.pkl", data)
      z.writestr(f"{archive}/byteorder", "little")
      for key, storage in writer.storages.values():
        z.writestr(f"{archive}/data/{key}", np.ascontiguousarray(storage).astype(storage.dtype.newbyteorder("<")).tobytes())
      z.writestr(f"{archive}/version", "3\n")
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
