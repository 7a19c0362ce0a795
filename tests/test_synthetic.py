"""The toy bouncing-shapes videos (deterministic, normalized, moving, bouncing, occluding, labelled)
and the video metrics (Fréchet distance against closed forms, and distances that rank degraded
videos as a person would)."""
import numpy as np
import pytest

from cf_jax import video_metrics
from cf_jax.data import synthetic

NUM_VIDEOS = 128


@pytest.fixture(scope="module")
def real():
  return synthetic.make_videos(0, NUM_VIDEOS)


@pytest.fixture(scope="module")
def other():
  return synthetic.make_videos(1, NUM_VIDEOS)


def shuffle_frames(videos, seed):
  """Every video's frames in its own random order."""
  rng = np.random.default_rng(seed)
  order = np.stack([rng.permutation(videos.shape[1]) for _ in range(len(videos))])  # [N, F]
  return np.take_along_axis(videos, order[:, :, None, None, None], axis=1)


def add_noise(videos, sigma, seed):
  return videos + sigma * np.random.default_rng(seed).standard_normal(videos.shape)


def test_videos_are_deterministic_in_the_seed_and_per_video():
  a = synthetic.make_videos(5, 8)
  assert np.array_equal(a, synthetic.make_videos(5, 8))
  assert np.array_equal(a[:3], synthetic.make_videos(5, 3))
  assert not np.allclose(a, synthetic.make_videos(6, 8))


def test_shapes_and_dtypes():
  state = synthetic.make_videos_with_state(0, 5, num_frames=3, height=12, width=20, channels=3)
  k = synthetic.MAX_OBJECTS
  assert state["videos"].shape == (5, 3, 12, 20, 3) and state["videos"].dtype == np.float32
  assert state["position"].shape == state["velocity"].shape == (5, 3, k, 2)
  assert state["masks"].shape == (5, 3, k, 12, 20)
  assert state["colour"].shape == (5, k, 3)
  assert np.all((1 <= state["num_objects"]) & (state["num_objects"] <= k))
  assert np.array_equal(state["active"].sum(1), state["num_objects"])
  assert np.all(state["masks"][~state["active"][:, None, :].repeat(3, 1)] == 0)
  assert np.all((state["size"] >= synthetic.MIN_SIZE) & (state["size"] <= synthetic.MAX_SIZE))


def test_values_are_roughly_normalized():
  videos = synthetic.make_videos(3, 512)
  assert abs(videos.mean()) < 0.1
  assert abs(videos.std() - 1) < 0.1


def test_objects_move_at_constant_speed_and_bounce_off_the_borders():
  state = synthetic.make_videos_with_state(2, 32, num_frames=64)
  half = state["size"][:, None, :, None] / 2  # [N, 1, K, 1]
  frame = np.array([16, 16])
  position, velocity = state["position"], state["velocity"]  # [N, F, K, 2]
  assert np.all((position >= half - 1e-9) & (position <= frame - half + 1e-9))
  assert np.allclose(np.linalg.norm(velocity, axis=-1), np.linalg.norm(velocity[:, :1], axis=-1))
  assert np.all(np.linalg.norm(velocity, axis=-1) >= synthetic.MIN_SPEED - 1e-9)
  flips = velocity[:, 1:] * velocity[:, :-1] < 0  # [N, F-1, K, 2]
  # at least 0.35 px/frame along some axis for 63 frames is more than the 14 px between the walls
  assert np.all(flips.any(axis=(1, 3))[state["active"]])
  step = position[:, 1:] - position[:, :-1]
  assert np.allclose(step[~flips], velocity[:, :-1][~flips])
  free = (position[:, :-1] + velocity[:, :-1])[flips]  # where the walls reflect the free path
  low = np.broadcast_to(half, position.shape)[:, 1:][flips]
  high = np.broadcast_to(frame - half, position.shape)[:, 1:][flips]
  assert np.allclose(np.where(free > high, 2 * high - free, 2 * low - free), position[:, 1:][flips])


def test_objects_occlude_in_depth_order():
  state = synthetic.make_videos_with_state(4, 256)
  masks = state["masks"]  # [N, F, K, H, W]
  covered = masks[:, :, 0] * masks[:, :, 1] > 0.25
  assert 0.05 < covered.any(axis=(1, 2, 3)).mean() < 0.95
  # where object 1 lies over object 0 (and object 2 is elsewhere), the pixel takes object 1's colour
  top = (masks[:, :, 1] > 0.8) & (masks[:, :, 0] > 0.8) & (masks[:, :, 2] < 0.01)  # [N, F, H, W]
  n = np.nonzero(top)[0]
  assert len(n) > 50
  raw = state["videos"][top] * synthetic.RAW_STD + synthetic.RAW_MEAN  # [P, C]
  to_top, to_below = (np.linalg.norm(raw - state["colour"][n, k], axis=-1) for k in (1, 0))
  assert np.all(to_top < to_below)


def test_the_same_label_gives_the_same_embedding():
  state = synthetic.make_videos_with_state(0, 64)
  embeds, labels = synthetic.prompt_embeddings(state, text_len=5, text_dim=8, seed=3)
  assert embeds.shape == (64, 5, 8) and embeds.dtype == np.float32 and labels.shape == (64,)
  assert np.array_equal(labels, (state["num_objects"] - 1) * 2 + state["shape"][:, 0])
  assert len(np.unique(labels)) == synthetic.NUM_LABELS
  for label in range(synthetic.NUM_LABELS):
    same = embeds[labels == label]
    assert np.array_equal(same, np.broadcast_to(same[0], same.shape))
  assert len(np.unique(embeds[:, 0, 0])) == synthetic.NUM_LABELS
  again, _ = synthetic.prompt_embeddings(labels, text_len=5, text_dim=8, seed=3)
  assert np.array_equal(again, embeds)
  assert not np.allclose(synthetic.prompt_embeddings(labels, 5, 8, seed=4)[0], embeds)


def test_frechet_distance_is_zero_for_one_set_and_symmetric():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
  b = 0.5 + rng.standard_normal((150, 6)) @ rng.standard_normal((6, 6))
  assert video_metrics.frechet_distance(a, a) < 1e-6
  assert video_metrics.frechet_distance(a, b) == pytest.approx(video_metrics.frechet_distance(b, a), rel=1e-9)
  rotation = np.linalg.qr(rng.standard_normal((6, 6)))[0]
  assert video_metrics.frechet_distance(a @ rotation, b @ rotation) == pytest.approx(
      video_metrics.frechet_distance(a, b), rel=1e-9)


def test_frechet_distance_matches_the_closed_form_for_1d_and_diagonal_gaussians():
  rng = np.random.default_rng(1)
  a, b = rng.normal(1.0, 2.0, 300), rng.normal(-0.5, 0.7, 400)
  expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
  assert video_metrics.frechet_distance(a[:, None], b[:, None]) == pytest.approx(expected, rel=1e-9)
  # all pairs of two 1-D samples: uncorrelated columns, so the covariance is exactly diagonal
  x, y, u, v = rng.normal(0, 1, 20), rng.normal(3, 2, 25), rng.normal(1, 3, 15), rng.normal(0, 0.5, 30)
  c = np.stack(np.meshgrid(x, y, indexing="ij"), -1).reshape(-1, 2)  # [500, 2]
  d = np.stack(np.meshgrid(u, v, indexing="ij"), -1).reshape(-1, 2)  # [450, 2]
  expected = sum((c[:, i].mean() - d[:, i].mean()) ** 2 + (c[:, i].std(ddof=1) - d[:, i].std(ddof=1)) ** 2
                 for i in range(2))
  assert video_metrics.frechet_distance(c, d) == pytest.approx(expected, rel=1e-9)


def test_distances_grow_with_noise(real, other):
  distances = [video_metrics.video_distances(real, add_noise(other, sigma, 0))
               for sigma in (0.0, 0.1, 0.3, 1.0)]
  for key in ("frame_fd", "motion_fd", "mean_abs_diff_energy", "mean_abs_diff_abs_diff"):
    values = [d[key] for d in distances]
    assert values == sorted(values) and values[-1] > 10 * values[0], (key, values)


def test_temporal_shuffle_raises_motion_distance_not_frame_distance(real, other):
  clean = video_metrics.video_distances(real, other)
  shuffled = video_metrics.video_distances(real, shuffle_frames(other, 0))
  assert shuffled["frame_fd"] == pytest.approx(clean["frame_fd"], rel=1e-6)
  assert shuffled["motion_fd"] > 50 * clean["motion_fd"]


def test_fresh_videos_are_much_closer_to_real_than_noise_or_shuffled_frames(real, other):
  fresh = video_metrics.video_distances(real, other)
  noise = video_metrics.video_distances(real, np.random.default_rng(0).standard_normal(real.shape))
  shuffled = video_metrics.video_distances(real, shuffle_frames(other, 1))
  assert fresh["frame_fd"] < 2 and fresh["motion_fd"] < 2
  assert noise["frame_fd"] > 100 * fresh["frame_fd"] and noise["motion_fd"] > 100 * fresh["motion_fd"]
  assert shuffled["motion_fd"] > 50 * fresh["motion_fd"]
  assert video_metrics.video_distances(real, real)["frame_fd"] < 1e-6
