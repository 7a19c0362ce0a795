"""Strict comparison of a converted state dict against the names and shapes a model expects."""
from collections.abc import Mapping, Sequence

import numpy as np

from cf_jax.convert.errors import CheckpointError

_MAX_LISTED = 8


def _listing(names: Sequence[str]) -> str:
  shown = ", ".join(names[:_MAX_LISTED])
  more = len(names) - _MAX_LISTED
  return shown + (f" (+{more} more)" if more > 0 else "")


def check_state_dict(
    state_dict: Mapping[str, np.ndarray],
    expected_shapes: Mapping[str, tuple[int, ...]],
    source: str,
) -> None:
  """Raises CheckpointError unless `state_dict` has exactly the expected keys and shapes.

  Every problem is reported in one line: missing keys, unexpected keys and shape mismatches,
  each list cut after a few names.
  """
  missing = sorted(set(expected_shapes) - set(state_dict))
  unexpected = sorted(set(state_dict) - set(expected_shapes))
  mismatched = sorted(
      f"{k} {tuple(state_dict[k].shape)} != {tuple(expected_shapes[k])}"
      for k in set(state_dict) & set(expected_shapes)
      if tuple(state_dict[k].shape) != tuple(expected_shapes[k])
  )
  problems = []
  if missing:
    problems.append(f"missing keys: {_listing(missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {_listing(unexpected)}")
  if mismatched:
    problems.append(f"shape mismatches: {_listing(mismatched)}")
  if problems:
    raise CheckpointError(
        f"{source} does not match the model config; " + "; ".join(problems)
        + " (check that the checkpoint and --model preset belong together)"
    )
