"""Decoding quality against network evaluations (NFE) for every solver, in one run.

On a trained workdir (stage 1, stage 2 and, if trained, the latent prior), for
each solver and step count: reconstruction L2 (with its 95% bootstrap interval)
and recon FID of the test split decoded from the posterior-mean codes with
fresh noise (protocol `sample`), prior-sample FID of --num_samples codes from
the VDAE's prior (the learned one when trained), and seconds per decoded image
(at eval.batch_size, compile excluded). Then the `inverted` protocol (x_0's
own PF-ODE noise) per inversion step count, the N(0, I) prior's sample FID
under the reference solver, and where a decode step's time goes (score
network, latent correction) beside the machine's measured matmul peak.
Writes WORKDIR/bench_decode/{results.json,table.md,nfe.png}.

  python -m vdae.benchmarks.bench_decode --config=configs/digits.py --workdir=runs/digits
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vdae.autoencoders import registry
from vdae.benchmarks import common
from vdae.data import pipeline
from vdae.diffusion import score
from vdae.diffusion import sde as sde_lib
from vdae.evaluation import harness
from vdae.io import files
from vdae.latent import correction
from vdae.parallel import runtime
from vdae.training import stages

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained workdir (stage 1 and stage 2).")
_GRID = flags.DEFINE_string(
  "grid",
  "em:50,100,200;pc:25,50,100,200;ode:50,100,200;heun:5,10,15,25;dpmpp_2m:10,15,20,30,50;"
  "dpmpp_2m_sde:10,15,20,30,50",
  "solver:steps,... separated by ';'",
)
_INVERT = flags.DEFINE_string("invert_steps", "10,20,50,100", "inversion step counts")
_REFERENCE = flags.DEFINE_string("reference", "pc:200", "the solver the others are judged by")
_NUM_TEST = flags.DEFINE_integer("num_test", 0, "test images (0 = the whole split)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "prior codes decoded for sample FID")
flags.mark_flags_as_required(["config", "workdir"])

CALLS_PER_STEP = {"em": 1, "pc": 2, "ode": 1, "heun": 2, "dpmpp_2m": 1, "dpmpp_2m_sde": 1}


def nfe(method: str, steps: int, corrector_steps: int = 1) -> int:
  """Network evaluations of one decode (score net + latent correction count as one),
  the final Tweedie denoise included."""
  per = 1 + corrector_steps if method == "pc" else CALLS_PER_STEP[method]
  return per * steps + 1


def parse_grid(text: str) -> list[tuple[str, int]]:
  out = []
  for part in filter(None, text.split(";")):
    method, steps = part.split(":")
    out += [(method.strip(), int(s)) for s in steps.split(",")]
  return out


class Bench:
  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.ctx = stages.context(config, workdir)
    self.ae = registry.load_vdae(config, workdir, self.ctx.mesh, self.ctx.image_shape)
    self.judge = harness.Judge(config, workdir, self.ctx.splits)
    self.batch = config.eval.batch_size
    arrays = self.ctx.splits["test"].arrays(_NUM_TEST.value or None)
    self.x, self.labels = arrays["image"], arrays.get("label")
    self.mu = pipeline.map_batched(self.ae.encode, self.x, self.batch)
    self.z_prior = self.ae.prior_sample(_NUM_SAMPLES.value, jax.random.key(config.seed + 1))

  def _decode(self, z, method, steps, seed) -> tuple[np.ndarray, float]:
    """Decodes of z in batches and seconds per image (the first batch warms up)."""
    counter = iter(range(len(z)))

    def one(zb):
      key = jax.random.fold_in(jax.random.key(seed), next(counter))
      return self.ae.decode(zb, key, "sample", method=method, num_steps=steps)

    one(np.zeros((self.batch, self.ae.latent_dim), np.float32))  # compile
    t0 = time.perf_counter()
    out = pipeline.map_batched(one, z, self.batch)
    padded = math.ceil(len(z) / self.batch) * self.batch
    return out, (time.perf_counter() - t0) / padded

  def row(self, method: str, steps: int) -> dict:
    rec, secs = self._decode(self.mu, method, steps, self.config.seed)
    r = {"method": method, "steps": steps, "nfe": nfe(method, steps), "time_per_image": secs}
    r.update(self.judge.recon(self.x, rec, self.labels))
    samples, _ = self._decode(self.z_prior, method, steps, self.config.seed + 2)
    r.update(self.judge.samples(samples))
    return r

  def standard_normal_row(self, method: str, steps: int) -> dict:
    z = np.asarray(jax.random.normal(jax.random.key(self.config.seed + 1), self.z_prior.shape))
    samples, _ = self._decode(z, method, steps, self.config.seed + 2)
    fid = self.judge.samples(samples, "sample_fid_standard_normal")
    return {"method": method, "steps": steps, **fid}

  def inverted_row(self, steps: int) -> dict:
    sp = self.config.sampling
    with sp.unlocked():
      sp.invert_num_steps = steps
    self.ae.compile_decode(self.mu[: self.batch], "inverted")
    t0 = time.perf_counter()
    rec = pipeline.map_batched(self.ae.reconstruct_inverted, (self.x, self.mu), self.batch)
    padded = math.ceil(len(self.x) / self.batch) * self.batch
    r = {"method": sp.invert_method, "steps": steps, "nfe": 2 * steps}
    r["time_per_image"] = (time.perf_counter() - t0) / padded
    r.update(self.judge.recon(self.x, rec, self.labels))
    return r

  def breakdown(self) -> dict:
    """Seconds per call at the decoding batch: the score network alone, the latent
    correction alone (encoder forward + input gradient), and both (one NFE)."""
    cfg, ae = self.config, self.ae
    x = jax.random.normal(jax.random.key(0), (self.batch, *self.ctx.image_shape))
    t = jnp.full((self.batch,), 0.5)
    z = jnp.asarray(self.mu[: self.batch])
    eps_fn = lambda p, x: score.eps_fn_for(ae.score_model, p, cfg.model)(x, t)
    enc = lambda p, x, t: ae.encoder.apply(p, x, t)
    corr = lambda p, x: correction.correction_score(
      lambda xx, tt: enc(p, xx, tt), x, t, z, cfg.encoder.logvar_term
    )
    f_eps, f_corr = jax.jit(eps_fn), jax.jit(corr)
    sigma = sde_lib.bcast(sde_lib.from_config(cfg.sde).marginal(t)[1], x)
    f_both = jax.jit(lambda ps, pe, x: eps_fn(ps, x) - sigma * corr(pe, x))
    return {
      "score_network_s": common.median_time(lambda: f_eps(ae.score_params, x), 20),
      "latent_correction_s": common.median_time(lambda: f_corr(ae.enc_params, x), 20),
      "one_nfe_s": common.median_time(lambda: f_both(ae.score_params, ae.enc_params, x), 20),
      "batch": self.batch,
    }


def table(rows: list[dict], keys: list[str]) -> str:
  head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"

  def fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)

  return head + "".join("| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |\n" for r in rows)


def plot(rows: list[dict], inverted: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for method in dict.fromkeys(r["method"] for r in rows):
    rs = [r for r in rows if r["method"] == method]
    n = [r["nfe"] for r in rs]
    axes[0].errorbar(
      n,
      [r["l2"] for r in rs],
      yerr=[
        [r["l2"] - r.get("l2_ci_low", r["l2"]) for r in rs],
        [r.get("l2_ci_high", r["l2"]) - r["l2"] for r in rs],
      ],
      marker="o",
      label=method,
    )
    if "recon_fid" in rs[0]:
      axes[1].plot(n, [r["recon_fid"] for r in rs], marker="o", label=method)
    if "sample_fid" in rs[0]:
      axes[2].plot(n, [r["sample_fid"] for r in rs], marker="o", label=method)
  if inverted:
    axes[0].plot(
      [r["nfe"] for r in inverted], [r["l2"] for r in inverted], "k--", marker="s", label="inverted"
    )
  for ax, title in zip(axes, ("recon L2 (sample protocol)", "recon FID", "prior-sample FID")):
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_title(title)
    ax.legend(fontsize=7)
  fig.tight_layout()
  files.write_with(path, lambda buf: fig.savefig(buf, format="png", dpi=110))
  plt.close(fig)


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  peak = common.matmul_peak_flops()
  bench = Bench(config, workdir)
  out_dir = os.path.join(workdir, "bench_decode")
  rows = []
  for method, steps in parse_grid(_GRID.value):
    rows.append(bench.row(method, steps))
    print(json.dumps(rows[-1]), flush=True)
  ref_method, ref_steps = _REFERENCE.value.split(":")
  ref = next(r for r in rows if r["method"] == ref_method and r["steps"] == int(ref_steps))
  for r in rows:
    r["time_ratio_to_reference"] = r["time_per_image"] / ref["time_per_image"]
  plain = bench.standard_normal_row(ref_method, int(ref_steps)) if bench.ae.learned_prior else {}
  inverted = [bench.inverted_row(int(s)) for s in _INVERT.value.split(",") if s]
  result = {
    "matmul_peak_gflops": peak / 1e9,
    "backend": jax.default_backend(),
    "learned_prior": bench.ae.learned_prior,
    "num_test": len(bench.x),
    "num_samples": len(bench.z_prior),
    "reference": ref_method + ":" + ref_steps,
    "rows": rows,
    "inverted": inverted,
    "standard_normal_prior": plain,
    "breakdown": bench.breakdown(),
    "fid_floor_train_vs_test": bench.judge.metrics.get("fid_floor_train_vs_test"),
  }
  keys = ["method", "steps", "nfe", "l2", "l2_ci_low", "l2_ci_high", "recon_fid"]
  keys += ["class_accuracy", "sample_fid", "sample_fid_ci_low", "sample_fid_ci_high"]
  keys += ["time_per_image", "time_ratio_to_reference"]
  md = f"Matmul peak {peak / 1e9:.0f} GFLOP/s ({jax.default_backend()}); "
  md += f"{len(bench.x)} test images, {len(bench.z_prior)} prior samples "
  md += f"({'learned' if bench.ae.learned_prior else 'N(0, I)'} prior).\n\n"
  md += table(rows, keys) + "\nInverted protocol:\n\n"
  md += table(inverted, ["method", "steps", "nfe", "l2", "l2_ci_low", "l2_ci_high", "recon_fid"])
  if plain:
    md += f"\nN(0, I) prior under {result['reference']}: {json.dumps(plain)}\n"
  md += f"\nTime per call at batch {bench.batch}: {json.dumps(result['breakdown'])}\n"
  files.write_json(os.path.join(out_dir, "results.json"), result)
  files.write_bytes(os.path.join(out_dir, "table.md"), md.encode())
  plot(rows, inverted, os.path.join(out_dir, "nfe.png"))
  print(md)


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  app.run(main)
