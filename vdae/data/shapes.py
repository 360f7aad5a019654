"""shapes: the generated colour dataset with known factors (data.source=shapes).

One object on a tinted background, rendered with vectorised numpy from a fixed
seed (no download; a 32x32 split of 20k images in a few seconds). Every image
comes with the factors that made it:

  shape       categorical  0 square, 1 disc, 2 cross (the label)
  hue         circular     the object's hue, radians in [0, 2 pi)
  background  circular     the background's hue, radians in [0, 2 pi)
  x, y        continuous   the object's centre, fractions of the width
  scale       continuous   its half-size, a fraction of the width
  rotation    circular     its angle doubled, radians in [0, 2 pi): every
                           object (its stripes included) repeats after pi

Detail a blurry decoder loses: edges anti-aliased over one pixel from a signed
distance, a one-pixel light outline, and stripes about 3 pixels apart across
the object at its rotation (so the disc shows its rotation too).
"""

from __future__ import annotations

import functools

import numpy as np

NAMES = ("shape", "hue", "background", "x", "y", "scale", "rotation")
KINDS = (
  "categorical",
  "circular",
  "circular",
  "continuous",
  "continuous",
  "continuous",
  "circular",
)
SHAPES = ("square", "disc", "cross")
SEED = 20261205  # the dataset, not a run: every run and seed sees the same images
SCALE = (0.14, 0.26)  # half-size range, fractions of the width
STRIPE_PERIOD = 3.0  # pixels
_CHUNK = 2048  # images rendered at once: bounds memory at 64x64


def factors(n: int, stream: int, seed: int = SEED) -> np.ndarray:
  """[n, 7] float32 factors in NAMES order, drawn uniformly from one stream
  (0 test, 1 train): the first k of n are the same for any n."""
  rng = np.random.default_rng([seed, stream])
  u = rng.uniform(size=(n, 7))  # one row per image: a prefix does not depend on n
  scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 5]
  # The centre keeps a rotated square's corner (0.85 sqrt 2 half-sizes out) and its
  # anti-aliased outline (1.5 pixels at 64x64) inside the frame.
  margin = scale * np.sqrt(2.0) * 0.85 + 1.5 / 64
  two_pi = 2.0 * np.pi
  out = np.stack(
    [
      np.minimum(np.floor(u[:, 0] * len(SHAPES)), len(SHAPES) - 1),
      two_pi * u[:, 1],
      two_pi * u[:, 2],
      margin + (1.0 - 2.0 * margin) * u[:, 3],
      margin + (1.0 - 2.0 * margin) * u[:, 4],
      scale,
      two_pi * u[:, 6],
    ],
    axis=1,
  )
  return out.astype(np.float32)


def hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
  """Hue h [...] in radians at saturation s and value v -> RGB [..., 3] in [0, 1]."""
  k = (np.asarray(h)[..., None] / (2.0 * np.pi) * 6.0 + np.array([5.0, 3.0, 1.0])) % 6.0
  return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _box_sdf(px, py, ax, ay):
  dx, dy = np.abs(px) - ax, np.abs(py) - ay
  outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
  return outside + np.minimum(np.maximum(dx, dy), 0.0)


_SDF = (
  lambda px, py, h: _box_sdf(px, py, 0.85 * h, 0.85 * h),  # square, about the disc's area
  lambda px, py, h: np.hypot(px, py) - h,  # disc
  lambda px, py, h: np.minimum(_box_sdf(px, py, h, h / 3), _box_sdf(px, py, h / 3, h)),  # cross
)


def render(f: np.ndarray, size: int) -> np.ndarray:
  """Factors [n, 7] -> images [n, size, size, 3] uint8."""
  out = np.empty((len(f), size, size, 3), np.uint8)
  for lo in range(0, len(f), _CHUNK):
    out[lo : lo + _CHUNK] = _render(f[lo : lo + _CHUNK], size)
  return out


def _render(f, size):
  col = lambda i: f[:, i, None, None]
  shape, hue, bg, x, y, scale, rot = (col(i) for i in range(7))
  centres = np.arange(size, dtype=np.float32) + 0.5
  # Pixel centres relative to the object's centre, in pixels, in the object's frame.
  dx = centres[None, None, :] - x * size
  dy = centres[None, :, None] - y * size
  theta = 0.5 * rot  # the stored angle is doubled (period pi)
  c, s = np.cos(theta), np.sin(theta)
  px, py = c * dx + s * dy, -s * dx + c * dy
  sdf = np.empty_like(px)
  for k, fn in enumerate(_SDF):
    i = shape[:, 0, 0] == k
    sdf[i] = fn(px[i], py[i], scale[i] * size)
  cover = np.clip(0.5 - sdf, 0.0, 1.0)  # anti-aliased over one pixel
  inner = np.clip(0.5 - (sdf + 1.0), 0.0, 1.0)  # one pixel in from the edge
  outline = cover - inner
  stripes = 0.5 + 0.5 * np.clip(3.0 * np.cos(2.0 * np.pi * px / STRIPE_PERIOD), -1.0, 1.0)
  obj = hsv_to_rgb(hue[:, 0, 0], 0.85, 0.95)[:, None, None, :].astype(np.float32)
  back = hsv_to_rgb(bg[:, 0, 0], 0.6, 0.35)[:, None, None, :].astype(np.float32)
  body = obj * (0.55 + 0.45 * stripes[..., None])
  img = back * (1.0 - cover[..., None]) + outline[..., None] * 0.98 + inner[..., None] * body
  return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


@functools.lru_cache(maxsize=2)  # every stage and picture of a run loads the splits
def generate(num_train: int, num_test: int, size: int, seed: int = SEED):
  """(train, test): each (images [n, size, size, 3] uint8, factors [n, 7] float32),
  read-only, from two streams of one seed, so the test split never depends on
  num_train."""
  out = []
  for f in (factors(num_train, 1, seed), factors(num_test, 0, seed)):
    images = render(f, size)
    images.flags.writeable = f.flags.writeable = False
    out.append((images, f))
  return tuple(out)
