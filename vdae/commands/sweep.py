"""--mode=sweep: the rate-distortion-perception sweep of every autoencoder over a beta grid.

Stage 1 is trained once in WORKDIR (or found there). Each point (model, beta,
seed) trains its own stage in WORKDIR/sweep/<model>_beta<beta>_seed<seed>/
(the VDAE's encoder against WORKDIR's score model) and is evaluated through
the harness with the classifier of WORKDIR. The VAE's diffusion
enhancements decode the VAE's code, so they sweep sweep.vae_betas and live in
the VAE point's directory: SDEdit with WORKDIR's score model, the refiner
trained there on that VAE. A point whose stages are trained and were evaluated
at their current steps (<point>/eval/evaluated_at.json) is not redone, so a
stopped sweep resumes. Written:

  WORKDIR/sweep/points.json         one record per point: model, beta, seed and
                                    every metric of the harness (unprefixed)
  WORKDIR/sweep/judge.json          classifier_test_accuracy, fid_floor_train_vs_test
  WORKDIR/sweep/rate_distortion.png distortion (per-image L2, each protocol),
                                    perception (recon FID) and recon class
                                    accuracy against rate (KL nats), every model
  WORKDIR/sweep/factors_rate.png    data with factors: each factor's probe score,
                                    DCI disentanglement and MIG against rate
  WORKDIR/sweep/table.md            the points, and the pairs at matched rate
                                    (KL within sweep.match_tolerance)
"""

from __future__ import annotations

import logging
import os

import jax

from vdae.autoencoders.registry import AUTOENCODERS
from vdae.commands import evaluate
from vdae.evaluation import harness
from vdae.io import files
from vdae.io.errors import ConfigError
from vdae.training import preemption, stages

log = logging.getLogger(__name__)

# The model whose code each autoencoder decodes: its beta grid and point directory.
CODE_OF = {"vdae": "vdae", "vae": "vae", "sdedit_vae": "vae", "refined_vae": "vae"}
BETA_KEY = {"vdae": "stage2", "vae": "vae"}  # the group whose beta_kl the sweep sets


def point_config(config, workdir: str, model: str, beta: float, seed: int):
  """The config of one point: its seed and beta; the VDAE's score model is WORKDIR's."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.seed = seed
    cfg[BETA_KEY[CODE_OF[model]]].beta_kl = float(beta)
    cfg.stage2.stage1_workdir = os.path.abspath(config.stage2.stage1_workdir or workdir)
  return cfg


def point_dir(workdir: str, model: str, beta: float, seed: int) -> str:
  return os.path.join(workdir, "sweep", f"{CODE_OF[model]}_beta{beta:g}_seed{seed}")


def _points(config):
  sw = config.sweep
  for model in sw.models:
    for beta in sw[f"{CODE_OF[model]}_betas"]:
      for seed in sw.seeds:
        yield model, float(beta), int(seed)


def _stages_to_train(model: str) -> list[str]:
  """What a point trains in its directory: the VAE under each of its enhancements."""
  entry = AUTOENCODERS[model]
  code = AUTOENCODERS[CODE_OF[model]].stage
  return list(dict.fromkeys((code, entry.stage)))


def matched_pairs(points: list[dict], tolerance: float) -> list[tuple[dict, dict]]:
  """(vdae point, vae point) pairs of one seed whose rates differ by at most
  `tolerance` of the VAE's: the comparisons at matched rate."""
  out = []
  for a in points:
    for b in points:
      if a["model"] == "vdae" and b["model"] == "vae" and a["seed"] == b["seed"]:
        if abs(a["rate_nats"] - b["rate_nats"]) <= tolerance * b["rate_nats"]:
          out.append((a, b))
  return out


def table(points: list[dict], protocols, tolerance: float) -> str:
  cols = ["model", "beta", "seed", "rate_nats"]
  cols += [f"{p}/l2" for p in protocols] + [f"{p}/recon_fid" for p in protocols]
  cols += [f"{p}/class_accuracy" for p in protocols] + ["linear_probe_accuracy", "sample_fid"]
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(fmt(p.get(c, float("nan"))) for c in cols) + " |" for p in points]
  pairs = matched_pairs(points, tolerance)
  lines += ["", f"Pairs at matched rate (KL within {tolerance:.0%}):", ""]
  if not pairs:
    lines.append("none: widen sweep.vdae_betas / sweep.vae_betas")
  for a, b in pairs:
    lines.append(
      f"- seed {a['seed']}: vdae beta {a['beta']:g} ({a['rate_nats']:.1f} nats) vs vae beta "
      f"{b['beta']:g} ({b['rate_nats']:.1f} nats)"
    )
  return "\n".join(lines) + "\n"


def _colours(points: list[dict]) -> dict[str, str]:
  """Each model's colour in both figures: the VDAE, the VAE, then the rest by name."""
  models = sorted({p["model"] for p in points}, key=lambda m: (m != "vdae", m != "vae", m))
  return {m: f"C{i}" for i, m in enumerate(models)}


def plot(points: list[dict], protocols, path: str) -> str:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [("l2", "per-image L2 ([0, 1] images)"), ("recon_fid", "recon FID")]
  panels.append(("class_accuracy", "recon class accuracy"))
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
  styles = {"sample": ":", "mode": "--", "mean": "-", "inverted": "-."}
  colours = _colours(points)  # one colour per model, styles per protocol
  for ax, (metric, title) in zip(axes, panels, strict=True):
    for model in colours:
      for protocol in protocols:
        pts = sorted(
          (p["rate_nats"], p[f"{protocol}/{metric}"])
          for p in points
          if p["model"] == model and f"{protocol}/{metric}" in p
        )
        if pts:
          r, v = zip(*pts, strict=True)
          ax.plot(
            r,
            v,
            styles.get(protocol, "-"),
            marker="o",
            color=colours.get(model),
            label=f"{model} {protocol}",
          )
    ax.set_xscale("log")
    if metric.endswith("fid"):  # from ~3 (sharp) to ~1000 (a collapsed code's one blur)
      ax.set_yscale("log")
    ax.set_xlabel("rate: KL(q(z|x) || N(0, I)), nats per image")
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  files.ensure_writable_dir(os.path.dirname(path))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_factors(points: list[dict], path: str) -> str | None:
  """Each factor's probe score, DCI disentanglement and MIG against rate, one panel each,
  for the models with codes of their own (the VAE's enhancements share the VAE's): data
  with factors only (else None)."""
  probes = sorted({k for p in points for k in p if k.startswith("factors/")})
  if not probes:
    return None
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  keys = probes + [k for k in ("dci/disentanglement", "mig") if any(k in p for p in points)]
  colours = {m: c for m, c in _colours(points).items() if CODE_OF.get(m) == m}
  cols = min(len(keys), 5)
  rows = -(-len(keys) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
  for ax, key in zip(axes.flat, keys, strict=False):
    for model, colour in colours.items():
      pts = sorted((p["rate_nats"], p[key]) for p in points if p["model"] == model and key in p)
      if pts:
        ax.plot(*zip(*pts, strict=True), "-o", color=colour, label=model)
    ax.set_title(key.removeprefix("factors/").replace("/", " "), fontsize=9)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.02)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(keys) :]:
    ax.axis("off")
  for ax in axes[-1]:
    ax.set_xlabel("rate (nats)")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  files.ensure_writable_dir(os.path.dirname(path))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def sweep(config, workdir: str) -> list[dict]:
  """Trains and evaluates every point of the sweep (resuming); returns the points."""
  sw = config.sweep
  bad = [m for m in sw.models if m not in CODE_OF]
  if bad or any(
    not sw[f"{CODE_OF[m]}_betas"] or min(sw[f"{CODE_OF[m]}_betas"]) < 0 for m in sw.models
  ):
    raise ConfigError(
      f"sweep.models={tuple(sw.models)}: models are some of {', '.join(CODE_OF)}, each "
      "with a non-empty sweep.vdae_betas or sweep.vae_betas of values >= 0"
    )
  ctx = stages.context(config, workdir)
  stages.check_shapes(["stage1", "stage2", "vae"], config, ctx.image_shape)
  if not config.stage2.stage1_workdir:  # else the score model is that workdir's, trained
    stages.train("stage1", config, workdir, ctx.mesh, ctx.splits)
  with harness.Timer("classifier"):
    judge = harness.Judge(config, workdir, ctx.splits)
  points = []
  for model, beta, seed in _points(config):
    preemption.exit_if_requested(f"before the sweep point {model} beta {beta:g} seed {seed}")
    cfg, sub = (
      point_config(config, workdir, model, beta, seed),
      point_dir(workdir, model, beta, seed),
    )
    entry, prefix = AUTOENCODERS[model], f"{model}/"
    trains = _stages_to_train(model)
    if model == "vdae" and sw.train_prior:  # its sample_fid from its own latent prior
      trains.append("prior")
    # One metrics file per directory, holding every model evaluated there, and the steps
    # of the stages each was evaluated at: a VAE trained further since its SDEdit or
    # refiner was evaluated makes theirs stale too.
    done = os.path.join(sub, "eval", "metrics.json")
    at_path = os.path.join(sub, "eval", "evaluated_at.json")
    metrics = files.read_json(done) if files.exists(done) else {}
    evaluated_at = files.read_json(at_path) if files.exists(at_path) else {}
    steps = {s: stages.trained_step(s, cfg, sub) for s in trains}
    if evaluated_at.get(model) == steps and all(steps[s] >= cfg[s].num_steps for s in trains):
      log.info("sweep: %s beta %g seed %d already evaluated", model, beta, seed)
    else:
      for stage in trains:
        stages.train(stage, cfg, sub, ctx.mesh, ctx.splits)
      with harness.Timer(f"sweep point {model} beta {beta:g} seed {seed}"):
        ae = entry.load(cfg, sub, ctx.mesh, ctx.image_shape)
        kept = evaluate.parts_store(cfg, sub, judge)  # its likelihood solve's batches
        kept = evaluate.model_store(kept, model, entry.reads, cfg, sub)
        new = harness.evaluate_autoencoder(ae, cfg, judge, ctx.splits, kept).metrics
      metrics = {k: v for k, v in metrics.items() if not k.startswith(prefix)}
      metrics.update({k: float(v) for k, v in new.items()})
      evaluate.write_metrics(sub, metrics, stages.trained_step(entry.stage, cfg, sub))
      evaluated_at[model] = {s: stages.trained_step(s, cfg, sub) for s in trains}
      if jax.process_index() == 0:
        files.write_json(at_path, evaluated_at)
    record = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
    points.append({"model": model, "beta": beta, "seed": seed, **record})
  if jax.process_index() == 0:
    out = os.path.join(workdir, "sweep")
    files.write_json(os.path.join(out, "points.json"), points)
    files.write_json(os.path.join(out, "judge.json"), judge.metrics)  # the FID floor
    text = table(points, config.eval.protocols, config.sweep.match_tolerance)
    files.write_bytes(os.path.join(out, "table.md"), text.encode())
    plot(points, config.eval.protocols, os.path.join(out, "rate_distortion.png"))
    plot_factors(points, os.path.join(out, "factors_rate.png"))
    log.info("sweep -> %s\n%s", out, text)
  return points
