"""Loss curves as a PNG, read back from the run's own TensorBoard event files.

TensorBoard's EventAccumulator reads the scalars; matplotlib (Agg, no display)
draws one panel per stage. `--mode=evaluate` writes WORKDIR/eval/loss_curves.png.
"""

from __future__ import annotations

import os

import numpy as np

from vdae import files

STAGES = (("stage1", "score model (DSM)"), ("stage2", "encoder (VDAE)"), ("vae", "VAE (-ELBO)"))


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


def plot_loss_curves(workdir: str, path: str, tag: str = "train/loss") -> str | None:
  """Writes one panel per stage that has logged `tag`; returns the path (None if none did)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = [
    (title, s)
    for stage, title in STAGES
    if (s := read_scalars(os.path.join(workdir, "tensorboard", stage), tag)) is not None
  ]
  if not runs:
    return None
  fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3), squeeze=False)
  for ax, (title, (steps, values)) in zip(axes[0], runs):
    ax.plot(steps, values, lw=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(tag)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  files.write_with(path, lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)
  return path
