"""--mode=evaluate: every trained autoencoder through the harness, the score model's
likelihood, and the pictures; WORKDIR/eval/metrics.json and `eval/...` TensorBoard scalars.

metrics.json has flat keys and float values: `<model>/<protocol>/<metric>` and
`<model>/<metric>` for each autoencoder in autoencoders/registry.py whose stage
is trained (the schema is in vdae/evaluation/harness.py and docs/evaluation.md),
score_model/bits_per_dim (with _converged) and score_model/bpd_solver_steps,
classifier_test_accuracy and fid_floor_train_vs_test. Pictures:
eval/<model>_reconstructions.png (originals, then each protocol's rows),
<model>_samples.png, comparison.png (the same 12 test images: originals, then one
labelled row per model, its `mean` or first protocol), loss_curves.png. Files are
written by process 0; every process runs the same computation.

Resumable: each model's metrics and picture rows, and each batch of a likelihood solve,
are kept in WORKDIR/eval/parts/ as soon as they are computed (vdae/evaluation/parts.py),
keyed by the config, the judge and the checkpoints they were computed from; a SIGTERM
exits 143 within a piece of work and the same command continues from there.
"""

from __future__ import annotations

import logging
import math
import os

import jax
import numpy as np

from vdae.autoencoders.registry import AUTOENCODERS
from vdae.commands import common
from vdae.evaluation import harness, parts, report
from vdae.io import curves, files, writer
from vdae.training import preemption, stages

log = logging.getLogger(__name__)


def comparison_rows(*sets: np.ndarray, cols: int = 8) -> np.ndarray:
  """Interleaves row blocks of `cols` images: set 0, set 1, ... then the next block."""
  n = min(len(x) for x in sets)
  cols = min(cols, n)
  n = n // cols * cols
  return np.concatenate([x[i : i + cols] for i in range(0, n, cols) for x in sets])


def _missing(name: str, entry, config, workdir: str) -> bool:
  missing = [s for s in (entry.stage, *entry.needs) if not stages.is_trained(s, config, workdir)]
  if missing:
    log.warning("no %s checkpoint in %s: skipping the %s metrics", missing[0], workdir, name)
  return bool(missing)


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


# Config groups no evaluation reads (every other group keys the kept parts, and a stage's
# own group keys the parts of the models that read that stage).
NOT_READ = ("sweep", "edit", "loop", "runtime")


def parts_store(config, workdir: str, judge: harness.Judge) -> parts.Store:
  """The store of this evaluation's finished parts (WORKDIR/eval/parts/), keyed by the
  config groups every model's evaluation reads and by the judge."""
  cfg = config.to_dict()
  shared = {k: v for k, v in cfg.items() if k not in stages.STAGES and k not in NOT_READ}
  return parts.Store(
    os.path.join(workdir, "eval", "parts"), {"config": shared, "judge": judge.fingerprint}
  )


def model_store(store: parts.Store, name: str, reads, config, workdir: str) -> parts.Store:
  """`store` keyed further by what `name` reads: each stage's config group and checkpoint."""
  cfg = config.to_dict()
  read = {
    s: {"config": cfg[s], "checkpoint": stages.fingerprint(s, config, workdir)} for s in reads
  }
  return store.child(model=name, stages=read)


def _plan(config) -> str:
  """What one model's evaluation runs, for its first log line."""
  ev = config.eval
  n = ev.num_test or "every"
  mean = f" (mean: {ev.mean_decodes} draws)" if "mean" in ev.protocols else ""
  return (
    f"{', '.join(ev.protocols)} decodes{mean} of {n} test images, {ev.num_samples} prior "
    f"samples, probes on the train split; -ELBO of {ev.elbo_num_images} images where it has one"
  )


def _kept_result(kept) -> harness.Result:
  values, arrays = kept
  recs = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("rec.")}
  return harness.Result(values, recs, arrays["samples"])


def evaluate(config, workdir: str) -> dict[str, float]:
  """Every metric this workdir's checkpoints allow; returns them and writes them. Each
  model's metrics (and each batch of a likelihood solve) are kept as soon as they are
  computed (eval/parts/), so a run stopped by SIGTERM continues where it stopped."""
  r = common.run(config, workdir)
  ev = config.eval
  with harness.Timer("classifier"):
    judge = harness.Judge(config, workdir, r.splits)
  store = parts_store(config, workdir, judge)
  metrics = dict(judge.metrics)
  results, score_params = {}, None
  todo = [
    (name, entry)
    for name, entry in AUTOENCODERS.items()
    if not _missing(name, entry, config, workdir)
  ]
  for k, (name, entry) in enumerate(todo):
    preemption.exit_if_requested(f"before evaluating {name} (the models before it are kept)")
    mine = model_store(store, name, entry.reads, config, workdir)
    kept = mine.load(name)
    if kept is not None:
      log.info(
        "evaluate: %s (%d/%d): kept from an earlier run (%s)",
        name,
        k + 1,
        len(todo),
        mine.directory,
      )
      results[name] = _kept_result(kept)
    else:
      log.info("evaluate: %s (%d/%d): %s", name, k + 1, len(todo), _plan(config))
      with harness.Timer(name):
        ae = entry.load(config, workdir, r.mesh, r.image_shape)
        results[name] = harness.evaluate_autoencoder(ae, config, judge, r.splits, mine)
      res = results[name]
      arrays = {f"rec.{p}": v[:32] for p, v in res.reconstructions.items()}
      mine.save(name, res.metrics, {**arrays, "samples": res.samples[:32]})
      score_params = getattr(ae, "score_params", score_params)
    metrics.update(results[name].metrics)
  if ev.bpd_num_images:
    mine = model_store(store, "score_model", ("stage1",), config, workdir)
    kept = mine.load("score_model")
    if kept is not None:
      metrics.update(kept[0])
    else:
      if score_params is None:
        score_params, _ = stages.load_stage(
          "stage1", config, workdir, r.mesh, r.image_shape, use_ema=config.sampling.use_ema
        )
      with harness.Timer("bits_per_dim"):
        x = r.splits["test"].arrays(ev.bpd_num_images)["image"]
        bpd = harness.score_model_bpd(config, score_params, x, mine)
      mine.save("score_model", bpd)
      metrics.update(bpd)
  preemption.exit_if_requested("before the evaluation's pictures (every metric is kept)")
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
