"""The evaluation's matplotlib figures (Agg, no display): loss curves read back from the
run's own TensorBoard event files (one panel per stage, WORKDIR/eval/loss_curves.png),
and image rows with their names at the left (WORKDIR/eval/comparison.png).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from vdae.io import files


def read_scalars(logdir: str, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(steps, values) of one scalar tag in a TensorBoard run directory, or None."""
  from tensorboard.backend.event_processing import event_accumulator

  if not files.isdir(logdir):
    return None
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0})
  acc.Reload()
  if tag not in acc.Tags().get("scalars", []):
    return None
  events = acc.Scalars(tag)
  return np.array([e.step for e in events]), np.array([e.value for e in events])


def plot_loss_curves(
  workdir: str, path: str, runs: Sequence[tuple[str, str]], tag: str = "train/loss"
) -> str | None:
  """One panel per (TensorBoard run, title) in `runs` that has logged `tag`.

  Returns the path written (None if no run had logged it).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  logged = [
    (title, s)
    for stage, title in runs
    if (s := read_scalars(os.path.join(workdir, "tensorboard", stage), tag)) is not None
  ]
  if not logged:
    return None
  fig, axes = plt.subplots(1, len(logged), figsize=(4 * len(logged), 3), squeeze=False)
  for ax, (title, (steps, values)) in zip(axes[0], logged, strict=True):
    ax.plot(steps, values, lw=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  files.write_with(path, lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)
  return path


def plot_labelled_rows(path: str, rows: Sequence[tuple[str, np.ndarray]], cols: int = 12) -> str:
  """One strip of the first `cols` images [N, H, W, C] in [-1, 1] per (label, images)
  row, the label at its left: the same test images through each model."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from vdae.io import writer

  cols = min(cols, min(len(ims) for _, ims in rows))
  size = (0.8 * cols + 1.6, 0.85 * len(rows))
  fig, axes = plt.subplots(len(rows), 1, figsize=size, squeeze=False)
  for ax, (label, ims) in zip(axes[:, 0], rows, strict=True):
    strip = writer.grid(np.asarray(ims[:cols]), cols)
    ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    for side in ax.spines.values():
      side.set_visible(False)
  fig.tight_layout()
  files.write_with(path, lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)
  return path
