"""A huggingface_hub cache folder, laid out as `snapshot_download` leaves it, for tests (nothing is
downloaded): `<cache>/models--ORG--NAME/` with `blobs/<sha256>` holding the bytes,
`snapshots/<commit>/<path>` symlinks to them, and `refs/main` naming the commit."""
import hashlib
import os
import pathlib
import shutil

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def add_repo(cache: pathlib.Path, repo_id: str, files: dict[str, pathlib.Path]) -> pathlib.Path:
  """Puts `files` (path in the repo -> local file) into the cache; returns the repo's cache folder."""
  repo = cache / f"models--{repo_id.replace('/', '--')}"
  snapshot = repo / "snapshots" / COMMIT
  (repo / "blobs").mkdir(parents=True, exist_ok=True)
  for name, local in files.items():
    blob = repo / "blobs" / hashlib.sha256(pathlib.Path(local).read_bytes()).hexdigest()
    if not blob.exists():
      shutil.copyfile(local, blob)
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
  (repo / "refs").mkdir(exist_ok=True)
  (repo / "refs" / "main").write_text(COMMIT)
  return repo
