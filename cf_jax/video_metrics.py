"""How close generated videos are to real ones, without a pretrained video network.

FVD needs an I3D network and videos far larger than the toy latents a CPU run makes, so these
metrics use hand-made features that the toy data (`cf_jax.data.synthetic`) makes meaningful:

  frame features   per frame: channel means and stds, mean gradient magnitude per channel and the
                   fraction of "object" pixels (far from the video's static background, a robust
                   plane fit over all its frames). Blind to the order of frames by construction.
  motion features  per video: mean absolute frame difference per step, speed and acceleration of
                   the centroid of the foreground mass, how often its velocity changes sign (the
                   bounces) and the correlation of consecutive frame differences. Frame order is
                   what they measure.

Each set of features becomes a Gaussian and the Fréchet distance between the real and generated
Gaussians is reported, after standardizing every feature by the real set's mean and std (the
features have unrelated units). Plain numpy, float64, deterministic.
"""
import numpy as np

FG_THRESHOLD = 0.5  # RMS over channels of the distance to the background, in data units (std ~1)
BACKGROUND_FITS = 3
BACKGROUND_KEEP = 0.5  # objects cover about 11% of the toy data's pixels, at most about 30%
EPS = 1e-6
SUMMARIES = ("energy", "fg_fraction", "abs_diff", "speed", "sign_flips")


def _plane_basis(height: int, width: int) -> np.ndarray:
  """Constant, y and x ramps over the frame [H * W, 3]."""
  y, x = np.meshgrid((np.arange(height) + 0.5) / height - 0.5, (np.arange(width) + 0.5) / width - 0.5,
                     indexing="ij")
  return np.stack([np.ones_like(y), y, x], -1).reshape(-1, 3)


def background(videos: np.ndarray) -> np.ndarray:
  """Each video's static background [N, H, W, C]: a plane per channel (the toy data's flat colour
  plus ramp) fitted by least squares to the pixels of all frames, refitted BACKGROUND_FITS - 1 times
  to the BACKGROUND_KEEP of pixels it fits best, so objects drop out. The temporal median, the
  usual estimate, keeps slow objects (they sit on the same pixels in most of a short clip)."""
  n, f, h, w, c = videos.shape
  basis = _plane_basis(h, w)  # [P, 3], P = H * W
  values = np.asarray(videos, np.float64).reshape(n, f, h * w, c)
  weight = np.ones((n, f, h * w))
  for _ in range(BACKGROUND_FITS):
    gram = np.einsum("np,pi,pj->nij", weight.sum(1), basis, basis)  # [N, 3, 3]
    plane = basis @ np.linalg.solve(gram, np.einsum("nfp,pi,nfpc->nic", weight, basis, values))  # [N, P, C]
    residual = np.sqrt(np.mean((values - plane[:, None]) ** 2, axis=-1))  # [N, F, P]
    cut = np.quantile(residual.reshape(n, -1), BACKGROUND_KEEP, axis=1)  # [N]
    weight = (residual <= cut[:, None, None]).astype(np.float64)
  return plane.reshape(n, h, w, c)


def foreground_distance(videos: np.ndarray) -> np.ndarray:
  """RMS over channels of the distance of every pixel to its video's background [N, F, H, W]."""
  return np.sqrt(np.mean((videos - background(videos)[:, None]) ** 2, axis=-1))


def frame_stats(videos: np.ndarray) -> dict[str, np.ndarray]:
  """Named per-frame statistics of videos [N, F, H, W, C], each [N, F, d]."""
  v = np.asarray(videos, np.float64)
  gy = v[:, :, 1:, :-1] - v[:, :, :-1, :-1]  # [N, F, H-1, W-1, C]
  gx = v[:, :, :-1, 1:] - v[:, :, :-1, :-1]
  return {
      "mean": v.mean(axis=(2, 3)),  # [N, F, C]
      "std": v.std(axis=(2, 3)),
      "energy": np.sqrt(gy**2 + gx**2).mean(axis=(2, 3)),
      "fg_fraction": (foreground_distance(v) > FG_THRESHOLD).mean(axis=(2, 3))[..., None],  # [N, F, 1]
  }


def centroids(videos: np.ndarray) -> np.ndarray:
  """Centroid (y, x) [N, F, 2] of the foreground mass, the excess of the distance to the background
  over FG_THRESHOLD; the frame's centre where there is none."""
  h, w = videos.shape[2:4]
  mass = np.maximum(foreground_distance(videos) - FG_THRESHOLD, 0)  # [N, F, H, W]
  y, x = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  total = mass.sum(axis=(2, 3)) + EPS  # [N, F]
  cy = ((mass * y).sum(axis=(2, 3)) + EPS * h / 2) / total
  cx = ((mass * x).sum(axis=(2, 3)) + EPS * w / 2) / total
  return np.stack([cy, cx], -1)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Cosine similarity over all but the first two axes: [N, T, ...] -> [N, T]."""
  axes = tuple(range(2, a.ndim))
  return (a * b).sum(axes) / (np.sqrt((a**2).sum(axes) * (b**2).sum(axes)) + EPS)


def motion_stats(videos: np.ndarray) -> dict[str, np.ndarray]:
  """Named per-video motion statistics of videos [N, F, H, W, C] (F >= 3), each [N, d]."""
  v = np.asarray(videos, np.float64)
  diff = v[:, 1:] - v[:, :-1]  # [N, F-1, H, W, C]
  velocity = np.diff(centroids(v), axis=1)  # [N, F-1, 2]
  acceleration = np.diff(velocity, axis=1)  # [N, F-2, 2]
  flips = velocity[:, 1:] * velocity[:, :-1] < 0  # [N, F-2, 2]
  return {
      "abs_diff": np.abs(diff).mean(axis=(2, 3, 4)),  # [N, F-1]
      "speed": np.linalg.norm(velocity, axis=-1),  # [N, F-1]
      "acceleration": np.linalg.norm(acceleration, axis=-1),  # [N, F-2]
      "sign_flips": flips.mean(axis=(1, 2))[:, None],  # [N, 1]
      "diff_autocorr": _cosine(diff[:, 1:], diff[:, :-1]).mean(axis=1, keepdims=True),  # [N, 1]
  }


def _frame_samples(stats: dict[str, np.ndarray]) -> np.ndarray:
  """Frame statistics [N, F, d_i] as one sample per frame [N * F, sum d_i]."""
  features = np.concatenate(list(stats.values()), -1)
  return features.reshape(-1, features.shape[-1])


def _video_samples(stats: dict[str, np.ndarray]) -> np.ndarray:
  """Motion statistics [N, d_i] as one sample per video [N, sum d_i]."""
  return np.concatenate(list(stats.values()), -1)


def frame_features(videos: np.ndarray) -> np.ndarray:
  """Frame features of videos [N, F, H, W, C], one sample per frame [N * F, 3 C + 1]."""
  return _frame_samples(frame_stats(videos))


def motion_features(videos: np.ndarray) -> np.ndarray:
  """Motion features of videos [N, F, H, W, C], one sample per video [N, 3 F - 1]."""
  return _video_samples(motion_stats(videos))


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix, negative rounding errors clipped."""
  w, q = np.linalg.eigh(a)
  return (q * np.sqrt(np.clip(w, 0, None))) @ q.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
  """Fréchet distance between Gaussians fitted to feats_a [N, D] and feats_b [M, D]:
  |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2). The inner root comes from the
  eigenvalues of a symmetric PSD matrix, with the trace of (S_a S_b)^1/2 (which is not symmetric)."""
  a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
  cov_a = np.atleast_2d(np.cov(a, rowvar=False))  # [D, D]
  cov_b = np.atleast_2d(np.cov(b, rowvar=False))
  root_a = _sqrtm_psd(cov_a)
  inner = root_a @ cov_b @ root_a
  trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
  distance = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
  return float(max(distance, 0.0))


def standardized_frechet(real: np.ndarray, generated: np.ndarray) -> float:
  """Fréchet distance after scaling every feature [*, D] to the real set's zero mean and unit std
  (a feature constant over the real set keeps its units)."""
  mean, std = real.mean(0), real.std(0)
  std = np.where(std > EPS, std, 1.0)
  return frechet_distance((real - mean) / std, (generated - mean) / std)


def video_distances(real: np.ndarray, generated: np.ndarray) -> dict[str, float]:
  """Distances between two sets of videos [N, F, H, W, C] and [M, F, H, W, C] (F >= 3):

    frame_fd, motion_fd         standardized Fréchet distances of frame and motion features
    mean_abs_diff_<statistic>   |real mean - generated mean| of one statistic, in its own units:
                                energy (gradient magnitude), fg_fraction, abs_diff (frame
                                difference), speed (of the centroid), sign_flips
  """
  frame_r, frame_g = frame_stats(real), frame_stats(generated)
  motion_r, motion_g = motion_stats(real), motion_stats(generated)
  out = {"frame_fd": standardized_frechet(_frame_samples(frame_r), _frame_samples(frame_g)),
         "motion_fd": standardized_frechet(_video_samples(motion_r), _video_samples(motion_g))}
  stats_r, stats_g = frame_r | motion_r, frame_g | motion_g
  for name in SUMMARIES:
    out[f"mean_abs_diff_{name}"] = float(abs(stats_r[name].mean() - stats_g[name].mean()))
  return out
