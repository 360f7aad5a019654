"""TensorBoard writer (process 0 only), image grids and the PNG/.npz picture writer.

tensorboardX writes event files without TensorFlow; `tensorboard --logdir
WORKDIR/tensorboard` shows one run per stage.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from vdae.io import files


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] float -> [0, 255] uint8, same shape."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
  """[N, H, W, C] in [-1, 1] -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] uint8 image."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  cols = cols or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    out[
      pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w
    ] = images[i]
  return out


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
  """Writes a uint8 [H, W, C] image; `scale` enlarges small grids (nearest)."""
  from PIL import Image

  if scale > 1:
    image = image.repeat(scale, 0).repeat(scale, 1)
  img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  files.write_with(path, lambda f: img.save(f, format="PNG"))


def write_images(out_dir: str, name: str, images: np.ndarray, cols=None, **arrays) -> str:
  """OUT_DIR/name.png (the grid, enlarged if tiny) and name.npz (images + arrays), from
  process 0 only; returns the PNG's path. The one grid -> PNG writer."""
  png = f"{out_dir.rstrip('/')}/{name}.png"
  if jax.process_index() == 0:
    save_png(png, grid(images, cols), auto_scale(images.shape[1]))
    files.write_npz(f"{out_dir.rstrip('/')}/{name}.npz", images=images, **arrays)
  return png


def auto_scale(h: int) -> int:
  """Enlargement that makes tiny (8x8) grids legible."""
  return max(1, 128 // max(h, 1) // 2)


class Writer:
  """Scalars, images and text to TensorBoard; a no-op on processes other than 0."""

  def __init__(self, logdir: str):
    self._w = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter

      self._w = SummaryWriter(logdir, flush_secs=10)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._w is not None:
      for k, v in values.items():
        self._w.add_scalar(k, float(v), step)

  def image(self, step: int, tag: str, images: np.ndarray) -> None:
    """images: [N, H, W, C] in [-1, 1], written as one grid."""
    if self._w is not None:
      g = grid(images)
      g = g.repeat(auto_scale(images.shape[1]), 0).repeat(auto_scale(images.shape[1]), 1)
      self._w.add_image(tag, g, step, dataformats="HWC")

  def text(self, step: int, tag: str, text: str) -> None:
    if self._w is not None:
      self._w.add_text(tag, text, step)

  def flush(self) -> None:
    if self._w is not None:
      self._w.flush()

  def close(self) -> None:
    if self._w is not None:
      self._w.close()
