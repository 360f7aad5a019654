"""Loss curves as a PNG, read back from the run's own TensorBoard event files.

TensorBoard's EventAccumulator reads the scalars; matplotlib (Agg, no display)
draws one panel per stage. `--mode=evaluate` writes WORKDIR/eval/loss_curves.png.
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
