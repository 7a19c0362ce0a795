"""Writes `torch.save`-format files from numpy for tests, including views into shared storages and
hand-built (hostile or odd) pickles, through the package's own writer."""
from cf_jax.convert import torch_pickle


class Tensor:
  """A tensor as torch stores it: a view (offset, size, stride) into a shared flat storage."""

  def __init__(self, storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class Raw:
  """Pre-built pickle opcodes, to write hostile or odd pickles."""

  def __init__(self, opcodes: bytes):
    self.opcodes = opcodes


class _Writer(torch_pickle.TorchPickleWriter):

  def value(self, obj) -> bytes:
    if isinstance(obj, Raw):
      return obj.opcodes
    if isinstance(obj, Tensor):
      return self.tensor(obj.storage, obj.offset, obj.size, obj.stride)
    return super().value(obj)


def save_torch_file(obj, path, archive: str = "archive") -> None:
  torch_pickle.save_torch_file(obj, path, archive, _Writer())
