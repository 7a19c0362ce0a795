"""Where training metrics go: stdout, `metrics.jsonl`, TensorBoard and (when asked) W&B.

Only process 0 writes. TensorBoard event files come from tensorboardX, so TensorFlow is never
needed; W&B is imported only when enabled. A resumed run starts its writer at the restored step:
rows past it (written after the checkpoint by the run that stopped) are dropped from
`metrics.jsonl` and purged from TensorBoard, so every step appears once. TensorBoard also gets
the config (as text and as hparams) and the generator's sample videos (animated GIFs in the
images tab).
"""
import importlib.util
import json
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from cf_jax import video_io
from cf_jax.errors import UserError
from cf_jax.training import config as config_lib


def check_wandb(wandb_cfg: ml_collections.ConfigDict) -> None:
  """Raises UserError when W&B is enabled but not installed; the trainer asks before it starts."""
  if wandb_cfg.enabled and importlib.util.find_spec("wandb") is None:
    raise UserError("wandb.enabled is set but wandb is not installed: pip install wandb, "
                    "or leave --config.wandb.enabled false")


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
      # Written now, so the writer's queue thread exists before any error could end the run
      # (tensorboardX cannot start it in its exit handler).
      self._write_config(config_json)
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

  def _write_config(self, config_json: dict) -> None:
    import tensorboardX  # pylint: disable=import-outside-toplevel

    text = json.dumps(config_json, indent=1)
    self._tb.add_text("config", "\n".join("    " + line for line in text.splitlines()), 0)  # a code block
    hparams = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
               for k, v in config_lib.flat_keys(config_json).items()}
    for summary in tensorboardX.summary.hparams(hparams, {}):
      self._tb._get_file_writer().add_summary(summary)

  def write_videos(self, step: int, tag: str, latents: np.ndarray) -> None:
    """Sample videos latents [N, F, h, w, C] as TensorBoard GIFs `tag/<i>` (a preview of latent
    channels 0–2; the trainer runs no VAE)."""
    if not self._tb:
      return
    from tensorboardX.proto import summary_pb2  # pylint: disable=import-outside-toplevel

    for i, video in enumerate(latent_preview(latents)):
      image = summary_pb2.Summary.Image(height=video.shape[1], width=video.shape[2], colorspace=3,
                                        encoded_image_string=video_io.gif_bytes(video))
      self._tb._get_file_writer().add_summary(summary_pb2.Summary(value=[summary_pb2.Summary.Value(
          tag=f"{tag}/{i}", image=image)]), step)

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


def latent_preview(latents: np.ndarray, min_size: int = 64) -> np.ndarray:
  """Latents [N, F, h, w, C] -> frames [N, F, H, W, 3] in [-1, 1]: channels 0–2, each video scaled
  by its largest magnitude, enlarged by an integer factor to at least `min_size` pixels high."""
  rgb = np.asarray(latents, np.float32)[..., :3]
  rgb = rgb / np.maximum(np.abs(rgb).max(axis=(1, 2, 3, 4), keepdims=True), 1e-6)
  factor = -(-min_size // rgb.shape[2])
  return rgb.repeat(factor, axis=2).repeat(factor, axis=3)
