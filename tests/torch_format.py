"""Writes `torch.save`-format files from numpy, for tests (torch is not a dependency).

The pickle is emitted opcode by opcode (protocol 2), exactly as torch lays out a state dict:
tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
with storages as persistent ids `('storage', torch.<X>Storage, key, 'cpu', numel)`.
"""
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
}


class Tensor:
  """A tensor as torch stores it: a view (offset, size, stride) into a shared flat storage."""

  def __init__(self, storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  @classmethod
  def of(cls, array: np.ndarray) -> "Tensor":
    array = np.ascontiguousarray(array)
    strides = tuple(s // array.itemsize for s in array.strides)
    return cls(array.reshape(-1), 0, array.shape, strides)


class Raw:
  """Pre-built pickle opcodes, to write hostile or odd pickles."""

  def __init__(self, opcodes: bytes):
    self.opcodes = opcodes


def _global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _str(s: str) -> bytes:
  data = s.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(i: int) -> bytes:
  return pickle.BININT + struct.pack("<i", i)


def _tuple(items: list[bytes]) -> bytes:
  return pickle.MARK + b"".join(items) + pickle.TUPLE


class _Writer:

  def __init__(self):
    self.storages: dict[int, tuple[str, np.ndarray]] = {}

  def value(self, obj) -> bytes:
    if isinstance(obj, Raw):
      return obj.opcodes
    if isinstance(obj, dict):
      items = b"".join(_str(k) + self.value(v) for k, v in obj.items())
      return _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK + items + pickle.SETITEMS
    if isinstance(obj, np.ndarray):
      obj = Tensor.of(obj)
    if isinstance(obj, Tensor):
      return self.tensor(obj)
    raise TypeError(f"cannot write {type(obj).__name__}")

  def tensor(self, t: Tensor) -> bytes:
    key = self.storages.setdefault(id(t.storage), (str(len(self.storages)), t.storage))[0]
    storage = _tuple([_str("storage"), _global("torch", _STORAGE_NAMES[t.storage.dtype]), _str(key), _str("cpu"),
                      _int(t.storage.size)]) + pickle.BINPERSID
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    args = _tuple([storage, _int(t.offset), _tuple([_int(n) for n in t.size]), _tuple([_int(s) for s in t.stride]),
                   pickle.NEWFALSE, hooks])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def save_torch_file(obj, path, archive: str = "archive") -> None:
  writer = _Writer()
  data = pickle.PROTO + bytes([2]) + writer.value(obj) + pickle.STOP
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(f"{archive}/data.pkl", data)
    z.writestr(f"{archive}/byteorder", "little")
    for key, storage in writer.storages.values():
      z.writestr(f"{archive}/data/{key}", np.ascontiguousarray(storage).astype(storage.dtype.newbyteorder("<")).tobytes())
    z.writestr(f"{archive}/version", "3\n")
