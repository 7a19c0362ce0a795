"""The row type of the converters' key tables, and nested-dict helpers for Flax param trees."""
import dataclasses
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Entry:
  """One reference tensor: its name, its place in the Flax tree, how its layout changes (a
  converter-specific kind), its reference shape, and its name in the diffusers layout (same
  shape; empty for networks diffusers does not hold)."""

  torch_name: str
  flax_path: tuple[str, ...]
  kind: str
  torch_shape: tuple[int, ...]
  diffusers_name: str = ""


def set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: Mapping, path: tuple[str, ...]) -> Any:
  """Raises KeyError or TypeError when the path is absent."""
  for key in path:
    tree = tree[key]
  return tree
