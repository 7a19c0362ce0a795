"""Where training metrics go: stdout, `metrics.jsonl`, TensorBoard and (when asked) W&B.

Only process 0 writes. TensorBoard event files come from tensorboardX, so TensorFlow is never
needed; W&B is imported only when enabled.
"""
import importlib.util
import json
import pathlib
from typing import Any

import jax
import ml_collections

from cf_jax.errors import UserError


def check_wandb(wandb_cfg: ml_collections.ConfigDict) -> None:
  """Raises UserError when W&B is enabled but not installed; the trainer asks before it starts."""
  if wandb_cfg.enabled and importlib.util.find_spec("wandb") is None:
    raise UserError("wandb.enabled is set but wandb is not installed: pip install wandb, "
                    "or leave --config.wandb.enabled false")


class MetricWriter:
  def __init__(self, workdir: str, tensorboard: bool, wandb_cfg: ml_collections.ConfigDict, config_json: dict):
    self._active = jax.process_index() == 0
    self._tb = self._wandb = self._jsonl = None
    if not self._active:
      return
    logdir = pathlib.Path(workdir)
    if not str(workdir).startswith("gs://"):
      logdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(logdir / "metrics.jsonl", "a", encoding="utf-8")
    if tensorboard:
      import tensorboardX  # pylint: disable=import-outside-toplevel

      self._tb = tensorboardX.SummaryWriter(str(logdir / "tensorboard"))
    check_wandb(wandb_cfg)
    if wandb_cfg.enabled:
      import wandb  # pylint: disable=import-outside-toplevel

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
