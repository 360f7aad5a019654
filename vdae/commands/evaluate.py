"""--mode=evaluate: every trained autoencoder through the harness, the score model's
likelihood, and the pictures; WORKDIR/eval/metrics.json and `eval/...` TensorBoard scalars.

metrics.json has flat keys and float values: `<model>/<protocol>/<metric>` and
`<model>/<metric>` for each autoencoder in autoencoders/registry.py whose stage
is trained (the schema is in vdae/evaluation/harness.py and docs/evaluation.md),
score_model/bits_per_dim and score_model/bpd_solver_steps,
classifier_test_accuracy and fid_floor_train_vs_test. Pictures:
eval/<model>_reconstructions.png (originals, then each protocol's rows),
<model>_samples.png, comparison.png (the same 12 test images: originals, then one
labelled row per model, its `mean` or first protocol), loss_curves.png. Files are
written by process 0; every process runs the same computation.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from vdae.autoencoders.registry import AUTOENCODERS
from vdae.commands import common
from vdae.evaluation import harness, report
from vdae.io import curves, files, writer
from vdae.training import preemption, stages

log = logging.getLogger(__name__)


def comparison_rows(*sets: np.ndarray, cols: int = 8) -> np.ndarray:
  """Interleaves row blocks of `cols` images: set 0, set 1, ... then the next block."""
  n = min(len(x) for x in sets)
  cols = min(cols, n)
  n = n // cols * cols
  return np.concatenate([x[i : i + cols] for i in range(0, n, cols) for x in sets])


def write_metrics(workdir: str, metrics: dict[str, float], step: int, images=None) -> str:
  """WORKDIR/eval/metrics.json, `eval/<key>` scalars and the picture grids (process 0 only)."""
  path = os.path.join(workdir, "eval", "metrics.json")
  if jax.process_index() != 0:
    return path
  files.write_json(path, metrics)
  tb = writer.Writer(os.path.join(workdir, "tensorboard", "eval"))
  try:
    tb.scalars(step, {f"eval/{k}": v for k, v in metrics.items() if math.isfinite(v)})
    for tag, ims in (images or {}).items():
      tb.image(step, f"eval/{tag}", ims)
      writer.save_png(
        os.path.join(workdir, "eval", f"{tag}.png"),
        writer.grid(ims, 8),
        writer.auto_scale(ims.shape[1]),
      )
  finally:
    tb.close()
  return path


def evaluate(config, workdir: str) -> dict[str, float]:
  """Every metric this workdir's checkpoints allow; returns them and writes them."""
  r = common.run(config, workdir)
  ev = config.eval
  with harness.Timer("classifier"):
    judge = harness.Judge(config, workdir, r.splits)
  metrics = dict(judge.metrics)
  results, score_params = {}, None
  for name, entry in AUTOENCODERS.items():
    preemption.exit_if_requested("during evaluation (nothing of it is written yet)")
    missing = [s for s in (entry.stage, *entry.needs) if not stages.is_trained(s, config, workdir)]
    if missing:
      log.warning("no %s checkpoint in %s: skipping the %s metrics", missing[0], workdir, name)
      continue
    with harness.Timer(name):
      ae = entry.load(config, workdir, r.mesh, r.image_shape)
      results[name] = harness.evaluate_autoencoder(ae, config, judge, r.splits)
    metrics.update(results[name].metrics)
    score_params = getattr(ae, "score_params", score_params)
  if ev.bpd_num_images:
    if score_params is None:
      score_params, _ = stages.load_stage(
        "stage1", config, workdir, r.mesh, r.image_shape, use_ema=config.sampling.use_ema
      )
    with harness.Timer("bits_per_dim"):
      x = r.splits["test"].arrays(ev.bpd_num_images)["image"]
      metrics.update(harness.score_model_bpd(config, score_params, x))
  preemption.exit_if_requested("during evaluation (nothing of it is written yet)")
  originals = r.splits["test"].arrays(32)["image"]
  shown = "mean" if "mean" in ev.protocols else ev.protocols[0]
  images = {}
  for name, res in results.items():
    images[f"{name}_reconstructions"] = comparison_rows(
      originals, *(r[:32] for r in res.reconstructions.values())
    )
    images[f"{name}_samples"] = res.samples[:32]
  if len(results) > 1:
    images["comparison"] = comparison_rows(
      originals, *(res.reconstructions[shown][:32] for res in results.values())
    )
  metrics = {k: float(v) for k, v in metrics.items()}
  step = stages.trained_step("stage2", config, workdir) or stages.trained_step(
    "stage1", config, workdir
  )
  path = write_metrics(workdir, metrics, step, images)
  if jax.process_index() == 0:
    runs = [(name, s.title) for name, s in stages.STAGES.items()]
    curves.plot_loss_curves(workdir, os.path.join(workdir, "eval", "loss_curves.png"), runs)
    if len(results) > 1:  # over the unlabelled grid write_metrics wrote
      rows = [("original", originals)]
      rows += [(f"{name} ({shown})", res.reconstructions[shown]) for name, res in results.items()]
      curves.plot_labelled_rows(os.path.join(workdir, "eval", "comparison.png"), rows)
  table = report.run_tables(metrics, list(AUTOENCODERS), list(ev.protocols))
  log.info("evaluation metrics -> %s\n%s", path, table)
  return metrics
