"""Strict comparison of a state dict against the names and shapes a model expects, and renaming
between the reference and the diffusers naming of a key table."""
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from cf_jax.convert.errors import CheckpointError
from cf_jax.convert.key_map import Entry

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


def naming_of(names: Collection[str], entries: Sequence[Entry], source: str) -> str:
  """'reference' or 'diffusers': the naming of the table that more of `names` belong to.

  Raises CheckpointError when no name belongs to either, naming what the file holds instead.
  """
  names = set(names)
  reference = len(names & {e.torch_name for e in entries})
  diffusers = len(names & {e.diffusers_name for e in entries})
  if not reference and not diffusers:
    training = " (a 'model.' prefix: a training checkpoint's state dict; save it as .pt)" if any(
        n.startswith("model.") for n in names) else ""
    raise CheckpointError(
        f"{source}: its tensor names ({_listing(sorted(names))}) are neither the original layout "
        f"({entries[-1].torch_name}, ...) nor the diffusers layout ({entries[-1].diffusers_name}, ...){training}"
    )
  return "diffusers" if diffusers > reference else "reference"


def to_reference_names(state_dict: Mapping[str, np.ndarray], entries: Sequence[Entry], source: str) -> dict[str, np.ndarray]:
  """Diffusers names -> reference names, after the same strict check of names and shapes."""
  check_state_dict(state_dict, {e.diffusers_name: e.torch_shape for e in entries}, f"{source} (diffusers layout)")
  return {e.torch_name: state_dict[e.diffusers_name] for e in entries}


def to_diffusers_names(state_dict: Mapping[str, np.ndarray], entries: Sequence[Entry]) -> dict[str, np.ndarray]:
  """Reference names -> diffusers names (the tensors unchanged)."""
  return {e.diffusers_name: state_dict[e.torch_name] for e in entries}
