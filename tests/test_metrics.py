"""TensorBoard gets the config (text and hparams) and the generator's sample videos: the event file
is read back record by record (TFRecord framing, tensorboardX's protobufs)."""
import io
import pathlib
import struct

import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2

from cf_jax.training import metrics
from cf_jax.training.trainer import Trainer
from tests.test_training import tiny_config


def read_events(logdir: pathlib.Path) -> list[event_pb2.Event]:
  """Every event of the event files in `logdir`: records of [length u64][crc u32][data][crc u32]."""
  events = []
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack_from("<Q", data, offset)
      events.append(event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length]))
      offset += 12 + length + 4
  return events


def test_latent_preview_scales_each_video_and_enlarges_it():
  latents = np.zeros((2, 3, 8, 10, 16), np.float32)
  latents[0, ..., :3] = 4.0
  latents[1, 0, 0, 0, 1] = -0.5
  preview = metrics.latent_preview(latents)
  assert preview.shape == (2, 3, 64, 80, 3)
  np.testing.assert_array_equal(preview[0], 1.0)
  assert preview[1].min() == -1.0 and preview[1, 0, :8, :8, 1].max() == -1.0 and preview[1].max() == 0.0


def test_generator_stage_writes_sample_gifs_and_the_config_to_tensorboard(tmp_path):
  c = tiny_config("causal_ode_chunkwise", tensorboard=True, sample_every=1, num_sample_videos=2)
  trainer = Trainer(c, str(tmp_path))
  trainer.run()
  events = read_events(tmp_path / "tensorboard")
  values = {v.tag: (e.step, v) for e in events for v in e.summary.value}
  for step in (1, 2):
    tags = {v.tag for e in events if e.step == step for v in e.summary.value if v.HasField("image")}
    assert tags == {"samples/0", "samples/1"}
  step, gif = values["samples/1"]
  assert step == c.num_steps
  image = gif.image
  assert image.encoded_image_string[:6] == b"GIF89a" and (image.height, image.width) == (64, 64)
  frames = Image.open(io.BytesIO(image.encoded_image_string))
  assert frames.n_frames == c.data.num_frames
  # The last GIF is the preview of exactly what sample_videos gives for the final generator.
  expected = metrics.latent_preview(trainer.sample_videos())[1]
  frames.seek(c.data.num_frames - 1)
  last = np.asarray(frames.convert("RGB"), np.float32) / 127.5 - 1
  np.testing.assert_allclose(last, expected[-1], atol=2 / 127.5 + 0.05)
  assert any(v.tag.startswith("config") for _, v in values.values())
  assert any(v.metadata.plugin_data.plugin_name == "hparams" for e in events for v in e.summary.value)
