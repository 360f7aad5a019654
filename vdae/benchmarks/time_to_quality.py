"""Quality against wall time for one stage: how long the quality the evaluation reports
takes to reach, which is what a stage's step count should be chosen by.

  python -m vdae.benchmarks.time_to_quality --config=configs/digits.py --workdir=W \
      --stage=stage1 [--every 250] [--set stage1.batch_size=64 ...] [--json OUT] [--plot PNG]

Trains the stage in W (resuming what is there) with a checkpoint every --every steps,
all kept, then scores each checkpoint's EMA parameters:
  stage1  sample FID of eval.num_samples unconditional samples (sampling.method),
          with its 95% interval, against the test split in the judge's feature space;
  stage2  the VDAE's `sample`-protocol reconstructions of the test split (the score
          model is W's newest stage 1): per-image L2 with its interval, recon FID,
          recon class accuracy.
  prior   sample FID of the VDAE (W's stages 1 and 2) decoding the latent prior's
          codes, as evaluation's vdae/sample_fid.
  refiner the refined VAE's `mean`-protocol reconstructions (W's VAE): L2, recon FID,
          class accuracy, as evaluation's refined_vae/mean/*.
Wall time is the run's own: TensorBoard's perf/loop_seconds at the checkpoint's step
(since the first step was compiled) plus perf/compile_seconds; W must not hold an
earlier, shorter run of the stage (its clock would restart on resume). A checkpoint
of a run that is still going has seen a learning rate not yet decayed, so its
quality is a lower bound on what a run of that length reaches.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os

import jax
import numpy as np

from vdae import schema
from vdae.autoencoders import registry
from vdae.autoencoders.vdae import VDAE
from vdae.benchmarks import bench_pipeline, common
from vdae.data import pipeline
from vdae.evaluation import harness
from vdae.io import curves
from vdae.io.errors import ConfigError
from vdae.parallel import runtime, sharding
from vdae.training import stages

QUALITY = {
  "stage1": "sample_fid",
  "stage2": "recon_fid",
  "prior": "sample_fid",
  "refiner": "recon_fid",
}


def apply_overrides(cfg, pairs: list[str]) -> None:
  """`group.field=value` pairs (Python literals) onto the config, then the checks every
  command runs (vdae.schema): an unknown key, a wrong type or an out-of-range choice is a
  ConfigError naming it."""
  for pair in pairs:
    key, _, value = pair.partition("=")
    *groups, field = key.split(".")
    try:
      node = cfg
      for g in groups:
        node = node[g]
      if field not in node:
        raise KeyError(f"no field {key!r}")
      try:
        node[field] = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        node[field] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise ConfigError(f"--set {pair}: {e}. Use an existing config field and its type.") from e
  schema.check(cfg)


def wall_seconds(workdir: str, stage: str) -> dict[int, float]:
  """step -> seconds since the run started (compile included), from its own scalars."""
  logdir = os.path.join(workdir, "tensorboard", stage)
  loop = curves.read_scalars(logdir, "perf/loop_seconds")
  comp = curves.read_scalars(logdir, "perf/compile_seconds")
  if loop is None:
    raise SystemExit(f"{logdir} has no perf/loop_seconds: train the stage with this version.")
  if np.any(np.diff(loop[1]) <= 0):  # its clock restarted: the stage was resumed
    raise SystemExit(
      f"{logdir} holds more than one run of {stage} (perf/loop_seconds restarts), so its "
      "wall times are not one run's. Use a workdir without that stage."
    )
  compile_s = float(comp[1][-1]) if comp is not None else 0.0
  return {int(s): float(v) + compile_s for s, v in zip(*loop, strict=True)}


def stage1_scorer(cfg, workdir, ctx, judge):
  """step -> sample FID (and interval) of that checkpoint's EMA score model."""
  n, b = cfg.eval.num_samples, cfg.eval.batch_size
  sample = stages.make_sample_fn(cfg, (b, *ctx.image_shape), ctx.mesh)
  key = jax.random.key(cfg.seed)

  def score(step):
    params, _ = stages.load_stage("stage1", cfg, workdir, ctx.mesh, ctx.image_shape, step=step)
    x = [sharding.to_host(sample(params, jax.random.fold_in(key, i))) for i in range(-(-n // b))]
    return judge.samples(np.concatenate(x)[:n])

  return score


def stage2_scorer(cfg, workdir, ctx, judge):
  """step -> the reconstruction metrics of the VDAE with that checkpoint's encoder."""
  score_params, _ = stages.load_stage("stage1", cfg, workdir, ctx.mesh, ctx.image_shape)
  test = ctx.splits["test"].arrays(cfg.eval.num_test or None)
  c = cfg.copy_and_resolve_references()
  c.eval.protocols = ("sample",)

  def score(step):
    enc, _ = stages.load_stage("stage2", cfg, workdir, ctx.mesh, ctx.image_shape, step=step)
    ae = VDAE(cfg, score_params, enc, ctx.mesh, ctx.image_shape)
    z = pipeline.map_batched(ae.encode, test["image"], cfg.eval.batch_size)
    rec, _ = harness.decode_protocols(ae, z, c)["sample"]
    return judge.recon(test["image"], rec, test["label"])

  return score


def prior_scorer(cfg, workdir, ctx, judge):
  """step -> sample FID of the VDAE's decodes of that checkpoint's latent-prior codes."""
  c = cfg.copy_and_resolve_references()
  c.sampling.latent_prior = "learned"
  ae = registry.load_vdae(c, workdir, ctx.mesh, ctx.image_shape)
  n, b = cfg.eval.num_samples, cfg.eval.batch_size
  key = jax.random.key(cfg.seed + 1)

  def score(step):
    ae.latent_prior = stages.load_prior(c, workdir, ctx.mesh, ctx.image_shape, step=step)
    z = ae.prior_sample(n, key)
    x, _ = harness.decode_all(ae, z, b, cfg.seed + 2, "sample")
    return judge.samples(x)

  return score


def refiner_scorer(cfg, workdir, ctx, judge):
  """step -> the refined VAE's `mean`-protocol reconstructions of the test split with
  that checkpoint's refiner (the protocol the comparison's headline uses)."""
  from vdae.autoencoders.refined_vae import RefinedVAE

  vae = registry.load_vae(cfg, workdir, ctx.mesh, ctx.image_shape)
  test = ctx.splits["test"].arrays(cfg.eval.num_test or None)
  c = cfg.copy_and_resolve_references()
  c.eval.protocols = ("mean",)
  z = pipeline.map_batched(vae.encode, test["image"], cfg.eval.batch_size)

  def score(step):
    params, _ = stages.load_stage("refiner", cfg, workdir, ctx.mesh, ctx.image_shape, step=step)
    ae = RefinedVAE(cfg, vae, params, ctx.mesh, ctx.image_shape)
    rec, _ = harness.decode_protocols(ae, z, c)["mean"]
    return judge.recon(test["image"], rec, test["label"])

  return score


SCORERS = {
  "stage1": stage1_scorer,
  "stage2": stage2_scorer,
  "prior": prior_scorer,
  "refiner": refiner_scorer,
}


def plot(rows: list[dict], stage: str, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  key = QUALITY[stage]
  fig, ax = plt.subplots(figsize=(5, 3.2))
  t = [r["wall_seconds"] / 60 for r in rows]
  ax.plot(t, [r[key] for r in rows], "o-")
  if f"{key}_ci_low" in rows[0]:
    ax.fill_between(
      t, [r[f"{key}_ci_low"] for r in rows], [r[f"{key}_ci_high"] for r in rows], alpha=0.25
    )
  for r, x in zip(rows, t, strict=True):
    ax.annotate(str(r["step"]), (x, r[key]), textcoords="offset points", xytext=(3, 4), fontsize=7)
  ax.set_xlabel("wall time, minutes (compile included)")
  ax.set_ylabel(key)
  ax.set_title(f"{stage}: quality against wall time (labels: step)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def measure(cfg, workdir: str, stage: str, every: int) -> tuple[list[dict], dict]:
  """Trains `stage` in workdir with a checkpoint every `every` steps (all kept) and
  scores each: (rows {step, wall_seconds, metrics...}, the judge's metrics)."""
  group = cfg[stage]
  if every % group.log_every:
    raise ValueError(f"every={every} must be a multiple of {stage}.log_every ({group.log_every})")
  group.checkpoint_every = every
  cfg.loop.keep_checkpoints = group.num_steps // every + 2
  stages.train(stage, cfg, workdir)
  wall = wall_seconds(workdir, stage)
  ctx = stages.context(cfg, workdir)
  judge = harness.Judge(cfg, workdir, ctx.splits)
  scorer = SCORERS[stage](cfg, workdir, ctx, judge)
  key = QUALITY[stage]
  print(f"{'step':>6s} {'minutes':>8s} {key:>12s}  other", flush=True)
  rows = []
  for step in [s for s in sorted(wall) if s % every == 0 or s == group.num_steps]:
    q = scorer(step)
    rows.append({"step": step, "wall_seconds": wall[step], **q})
    other = {k: round(v, 4) for k, v in q.items() if k != key and not math.isnan(v)}
    print(f"{step:6d} {wall[step] / 60:8.2f} {q[key]:12.3f}  {other}", flush=True)
  return rows, judge.metrics


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/digits.py")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--stage", choices=sorted(SCORERS), required=True)
  ap.add_argument("--every", type=int, default=250, help="checkpoint (and score) every N steps")
  ap.add_argument("--set", nargs="*", default=[], help="config overrides group.field=value")
  ap.add_argument("--json", default="")
  ap.add_argument("--plot", default="")
  args = ap.parse_args()
  cfg = bench_pipeline.load_config(args.config)
  try:
    apply_overrides(cfg, args.set)
  except ConfigError as e:
    ap.error(str(e))
  peak = common.matmul_peak_flops()
  print(f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
  try:
    rows, judged = measure(cfg, args.workdir, args.stage, args.every)
  except ValueError as e:
    ap.error(str(e))
  out = {
    "stage": args.stage,
    "config": args.config,
    "overrides": args.set,
    "matmul_peak_gflops": peak / 1e9,
    "fid_floor_train_vs_test": judged.get("fid_floor_train_vs_test"),
    "rows": rows,
  }
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  if args.plot:
    plot(rows, args.stage, args.plot)


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
