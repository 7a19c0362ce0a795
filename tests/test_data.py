"""ArrayRecord datasets: round trip through grain, resuming after an interruption, and the video
encoding CLI."""
import json
import subprocess
import sys

import imageio.v2 as imageio
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from cf_jax import weights
from cf_jax.data import records
from cf_jax.models import vae
from tests.conftest import FIXTURES
from cf_jax.text.encoder import TextEncoder
from tests.test_cli import ENV
from tests.test_tokenizer import build_tokenizer


def make_record(i):
  return {"index": i, "prompt": f"prompt {i}", "embeds": np.full((3, 2), i, ml_dtypes.bfloat16),
          "x": np.arange(4, dtype=np.float32) * i}


def test_records_round_trip_every_dtype():
  record = make_record(5)
  out = records.deserialize(records.serialize(record))
  assert out["index"] == 5 and out["prompt"] == "prompt 5"
  assert out["embeds"].dtype == ml_dtypes.bfloat16 and np.array_equal(out["embeds"], record["embeds"])
  np.testing.assert_array_equal(out["x"], record["x"])


def test_resume_after_interruption_has_no_duplicates_or_gaps(tmp_path):
  items = list(range(11))
  calls = []

  def encode(batch, first, fail_at=None):
    calls.extend(batch)
    if fail_at is not None and fail_at in batch:
      raise KeyboardInterrupt  # the job is killed half-way through shard 2
    return [make_record(i) for i in batch]

  with pytest.raises(KeyboardInterrupt):
    records.write_sharded(tmp_path, items, lambda b, f: encode(b, f, fail_at=7), 3, 2, "test")
  assert sorted(p.name for p in tmp_path.glob("shard-*")) == [records.shard_name(i, 4) for i in (0, 1)]
  with pytest.raises(ValueError, match="incomplete"):
    records.dataset(tmp_path)
  calls.clear()
  records.write_sharded(tmp_path, items, encode, 3, 2, "test")
  assert calls == [6, 7, 8, 9, 10]  # only the missing shards were encoded again
  ds = records.dataset(tmp_path)
  assert [r["index"] for r in ds] == items
  assert json.loads((tmp_path / records.MANIFEST).read_text())["num_records"] == 11
  assert not list(tmp_path.glob(".*tmp"))


def test_encode_videos_from_files_and_frame_folders(tmp_path):
  rng = np.random.default_rng(0)
  clips = tmp_path / "clips"
  clips.mkdir()
  video = rng.integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
  (clips / "b_frames").mkdir()
  for i, frame in enumerate(video):
    Image.fromarray(frame).save(clips / "b_frames" / f"{i:03d}.png")
  (clips / "b_frames.txt").write_text("a folder of frames\n")
  with imageio.get_writer(clips / "a.mp4", fps=16, codec="libx264", macro_block_size=1) as w:
    for frame in video:
      w.append_data(frame)
  (clips / "a.txt").write_text("a video file")

  tokenizer = build_tokenizer(tmp_path / "tokenizer")

  def encode_videos(out):
    args = [sys.executable, "-m", "cf_jax.encode_videos", "--videos", str(clips), "--out", str(out),
            "--vae_checkpoint", str(FIXTURES / "wanvae_tiny.pt"), "--vae_model", "tiny", "--num_frames", "5",
            "--height", "32", "--width", "32", "--dtype", "float32", "--t5_checkpoint",
            str(FIXTURES / "umt5_tiny.pt"), "--t5_model", "tiny", "--tokenizer", str(tokenizer)]
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=600)

  result = encode_videos(tmp_path / "out")
  assert result.returncode == 0, result.stderr
  ds = records.dataset(tmp_path / "out")
  assert [r["name"] for r in ds] == ["a.mp4", "b_frames"]
  assert [r["prompt"] for r in ds] == ["a video file", "a folder of frames"]
  cfg, params = weights.load("vae", FIXTURES / "wanvae_tiny.pt", vae.VAEConfig.tiny())
  expected = vae.encode(params, jnp.asarray(video / 127.5 - 1.0, jnp.float32)[None], cfg)[0]
  assert ds[1]["latents"].shape == (2, 4, 4, 16)
  np.testing.assert_allclose(ds[1]["latents"], np.asarray(expected), atol=1e-5)  # lossless PNG frames
  assert np.abs(ds[0]["latents"] - np.asarray(expected)).mean() < 0.1  # H.264 is lossy
  # The captions' embeddings, as the text encoder gives them: what the training stages read.
  text = TextEncoder.load(str(FIXTURES / "umt5_tiny.pt"), str(tokenizer), "tiny")
  embeds, _ = text(["a video file", "a folder of frames"])
  np.testing.assert_allclose(np.stack([r["prompt_embeds"] for r in ds]), embeds, atol=1e-6)

  (clips / "a.txt").unlink()
  missing = encode_videos(tmp_path / "out2")
  assert missing.returncode != 0 and "a.mp4 has no caption" in missing.stderr
