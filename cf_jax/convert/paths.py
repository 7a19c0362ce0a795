"""Where the weights are inside the folders users download.

Two folder layouts stand for the files inside them:

* a huggingface_hub cache folder `models--ORG--NAME` (what `huggingface-cli download` and
  `snapshot_download` fill without `--local-dir`) stands for `snapshots/<hash>` of `refs/main`;
* a diffusers pipeline root (it has `model_index.json`) stands for one component folder,
  `transformer/` or `vae/`.
"""
import pathlib

from cf_jax.convert.errors import CheckpointError

PIPELINE_INDEX = "model_index.json"


def hub_snapshot(path: pathlib.Path) -> pathlib.Path:
  """The snapshot `refs/main` names, for a `models--ORG--NAME` folder; any other path as is."""
  if not (path.name.startswith("models--") and (path / "snapshots").is_dir()):
    return path
  ref = path / "refs" / "main"
  if not ref.is_file():
    raise CheckpointError(f"{path} is a huggingface_hub cache folder without refs/main; pass one of its "
                          f"snapshots/<hash> folders")
  snapshot = path / "snapshots" / ref.read_text().strip()
  if not snapshot.is_dir():
    raise CheckpointError(f"{path}: refs/main names snapshot {snapshot.name}, which is not there; download again")
  return snapshot


def resolve(path, component: str) -> pathlib.Path:
  """The file or folder that holds the weights of `component` ('transformer' or 'vae')."""
  path = hub_snapshot(pathlib.Path(path))
  if (path / PIPELINE_INDEX).is_file():
    if not (path / component).is_dir():
      raise CheckpointError(f"{path} is a diffusers pipeline without a {component}/ folder")
    return path / component
  return path
