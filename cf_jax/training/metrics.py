"""Where training metrics go: stdout, `metrics.jsonl`, TensorBoard and (when asked) W&B.

Only process 0 writes. TensorBoard event files come from tensorboardX, so TensorFlow is never
needed; W&B is imported only when enabled. A resumed run starts its writer at the restored step:
rows past it (written after the checkpoint by the run that stopped) are dropped from
`metrics.jsonl` and purged from TensorBoard, so every step appears once.
"""
import json
import os
import pathlib
from typing import Any

import jax
import ml_collections


class MetricWriter:
  def __init__(self, workdir: str, tensorboard: bool, wandb_cfg: ml_collections.ConfigDict, config_json: dict,
               start_step: int = 0):
    self._active = jax.process_index() == 0
    self._tb = self._wandb = self._jsonl = None
    if not self._active:
      return
    logdir = pathlib.Path(workdir)
    if not str(workdir).startswith("gs://"):
      logdir.mkdir(parents=True, exist_ok=True)
      _truncate_jsonl(logdir / "metrics.jsonl", start_step)
      self._jsonl = open(logdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      import tensorboardX  # pylint: disable=import-outside-toplevel

      self._tb = tensorboardX.SummaryWriter(str(logdir / "tensorboard"), purge_step=start_step + 1)
    if wandb_cfg.enabled:
      try:
        import wandb  # pylint: disable=import-outside-toplevel
      except ImportError:
        raise ValueError("wandb.enabled is set but wandb is not installed: pip install wandb") from None
      self._wandb = wandb.init(project=wandb_cfg.project, name=wandb_cfg.name or None, config=config_json)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self._active:
      return
    scalars = {k: float(v) for k, v in metrics.items()}
    if self._jsonl:
      self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
      self._jsonl.flush()
    if self._tb:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)
    if self._wandb:
      self._wandb.log(scalars, step=step)

  def close(self) -> None:
    for sink in (self._jsonl, self._tb):
      if sink:
        sink.close()
    if self._wandb:
      self._wandb.finish()


def _truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
  """Keeps the rows of `path` up to `last_step` (and drops a line cut short by a kill)."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if row["step"] <= last_step:
      kept.append(line + "\n")
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text("".join(kept), encoding="utf-8")
  os.replace(tmp, path)
