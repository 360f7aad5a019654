"""Loss curves are read back from the run's own event files."""

import os

import numpy as np
import pytest
from PIL import Image

from vdae.io import curves, writer

RUNS = (("stage1", "score"), ("stage2", "encoder"), ("vae", "VAE"))


def test_loss_curves_from_tensorboard_events(tmp_path):
  for stage, scale in (("stage1", 10.0), ("stage2", 2.0)):
    w = writer.Writer(str(tmp_path / "tensorboard" / stage))
    for step in range(0, 100, 10):
      w.scalars(step, {"train/loss": scale / (1 + step)})
    w.close()
  steps, values = curves.read_scalars(str(tmp_path / "tensorboard" / "stage1"), "train/loss")
  np.testing.assert_array_equal(steps, np.arange(0, 100, 10))
  np.testing.assert_allclose(values, 10.0 / (1 + steps), rtol=1e-6)
  assert curves.read_scalars(str(tmp_path / "tensorboard" / "vae"), "train/loss") is None
  path = curves.plot_loss_curves(str(tmp_path), str(tmp_path / "eval" / "loss_curves.png"), RUNS)
  w, h = Image.open(path).size
  assert w > 2 * h  # two panels side by side (stage1, stage2; no VAE run)
  assert not any(f.endswith(".tmp.png") for f in os.listdir(tmp_path / "eval"))
  assert curves.plot_loss_curves(str(tmp_path / "none"), str(tmp_path / "x.png"), RUNS) is None


@pytest.mark.timeout(60)
def test_labelled_rows_draw_one_strip_per_row(tmp_path):
  ims = np.linspace(-1, 1, 20 * 64).reshape(20, 8, 8, 1).astype(np.float32)
  sizes = []
  for n in (2, 4):
    rows = [(f"r{i}", ims) for i in range(n)]
    path = curves.plot_labelled_rows(str(tmp_path / f"{n}.png"), rows)
    sizes.append(Image.open(path).size)
  assert sizes[1][1] > 1.5 * sizes[0][1]  # twice the rows, about twice as tall
  assert sizes[0][0] == sizes[1][0]  # the same 12 columns
