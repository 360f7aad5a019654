"""One evaluation of any `Autoencoder` on the held-out split, and of the score model's likelihood.

`evaluate_autoencoder` gives every autoencoder the same keys (the schema
users and scripts rely on; vdae/commands/evaluate.py writes them to
metrics.json, docs/evaluation.md lists them):

  <model>/<protocol>/<metric>   for each decode protocol in eval.protocols:
      sample   one stochastic decode of the posterior-mean code;
      mode     the deterministic decode (the model's mode / PF ODE from the
               prior's mean noise);
      mean     the average of eval.mean_decodes stochastic decodes, an
               estimate of E[x | z] (exact where the model has it in closed
               form);
      inverted the decode from z and the image's own noise x_1, found by
               running the PF ODE forwards (Diff-AE; models that can: the VDAE);
    metrics: l2 (mean over images of ||x_hat - x||_2 on [0, 1] images, with
    l2_ci_low / l2_ci_high), mse (on [0, 1]), psnr (mean of per-image PSNRs),
    class_accuracy (the evaluation classifier gives the reconstruction the
    original's label), recon_fid,
    time_per_image (seconds per decoded image at eval.batch_size, compile
    excluded). Reconstructions are clipped to [-1, 1] first.
  <model>/rate_nats             KL(q(z | x) || N(0, I)), nats per image.
  <model>/linear_probe_accuracy logistic regression on the codes (fit on all
                                of train, scored on all of test).
  <model>/sample_fid            z from the model's prior (the VDAE's learned
                                latent prior when trained, else N(0, I))
                                decoded (protocol sample), with
                                sample_fid_ci_low / _high and sample_fid_num.
  <model>/sample_fid_standard_normal  the same from z ~ N(0, I), where the
                                prior is learned (its _ci_low / _high / _num).
  <model>/factors/<name>/{r2,accuracy}, <model>/dci/{disentanglement,
                                completeness,informativeness}, <model>/mig
                                where the source has factors (shapes; npz
                                with `factors`): vdae/evaluation/factors.py.
  <model>/...                   plus the model's own `extra_metrics`
                                (neg_elbo_bits_per_dim, ...).

Unprefixed: classifier_test_accuracy, fid_floor_train_vs_test (train images vs
the test split at the sample-FID's sample size: the floor that size allows).
Intervals are 95% bootstrap intervals (BCa for L2; see metrics.fid_interval for FID):
over the images for L2; for
sample FID over the draws and the test split, each on its own. Recon FID has
none (see Judge.recon). `score_model_bpd` gives score_model/bits_per_dim: the
unconditional score model's PF-ODE likelihood (diffusion/likelihood.py).
Datasets without labels get the label-free metrics. Every batch comes from
data/pipeline.py, padded with a mask.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders.base import Autoencoder
from vdae.data import pipeline, sources
from vdae.diffusion import likelihood, score
from vdae.diffusion import sde as sde_lib
from vdae.evaluation import classifier, factors, metrics, parts
from vdae.parallel import sharding
from vdae.training import eta, preemption

log = logging.getLogger(__name__)


class Timer:
  """Logs how long each part of the evaluation took (the budget is what users tune)."""

  def __init__(self, name: str):
    self.name = name

  def __enter__(self):
    self.t0 = time.perf_counter()

  def __exit__(self, *exc):
    log.info("evaluate: %s took %.1f s", self.name, time.perf_counter() - self.t0)


class Judge:
  """The metrics of a set of decodes: distortion always; classifier, features and
  probe when the data has labels."""

  def __init__(self, config, workdir: str, splits: dict[str, sources.Split]):
    self.config = config
    self.resamples, self.seed = config.eval.bootstrap_resamples, config.seed
    self.labelled = splits["train"].has_labels and splits["test"].has_labels
    self.metrics: dict[str, float] = {}
    self.fingerprint = "none"  # what identifies the judge's parameters (parts.Store keys)
    if not self.labelled:
      log.info("the data has no labels: skipping classifier, FID and probe metrics")
      return
    model, params, meta = classifier.load_or_train(config.eval, config.data, workdir, splits)
    self.predict = classifier.make_predict(model, params)
    leaves = [
      hashlib.sha256(sharding.to_host(a).tobytes()).hexdigest() for a in jax.tree.leaves(params)
    ]
    self.fingerprint = parts.digest(leaves)
    _, self.test_feats = self.predict(splits["test"].arrays()["image"])
    n = min(len(splits["train"]), max(config.eval.num_samples, 2))
    _, train_feats = self.predict(splits["train"].arrays(n)["image"])
    self.metrics = {
      "classifier_test_accuracy": float(meta["test_accuracy"]),
      "fid_floor_train_vs_test": metrics.fid_from_features(train_feats, self.test_feats),
    }

  def _fid(self, feats: np.ndarray, key: str, interval: bool) -> dict[str, float]:
    out = {key: metrics.fid_from_features(feats, self.test_feats)}
    if interval and self.resamples:
      lo, hi = metrics.fid_interval(feats, self.test_feats, self.seed, self.resamples)
      out[f"{key}_ci_low"], out[f"{key}_ci_high"] = lo, hi
    return out

  def recon(self, x: np.ndarray, rec: np.ndarray, labels: np.ndarray | None) -> dict:
    """Distortion (and, with labels, perception) of reconstructions rec of x [N, ...]."""
    rec = np.clip(rec, -1.0, 1.0)
    l2 = metrics.l2_per_image(rec, x)
    out = {
      "l2": float(np.mean(l2)),
      "mse": float(np.mean(np.square(0.5 * (rec - x)))),
      "psnr": float(np.mean(metrics.psnr(rec, x))),
    }
    if self.resamples:
      out["l2_ci_low"], out["l2_ci_high"] = metrics.mean_interval(l2, self.seed, self.resamples)
    if self.labelled:
      logits, feats = self.predict(rec)
      out["class_accuracy"] = float(np.mean(logits.argmax(-1) == labels))
      # No interval: reconstructions are paired with the test images they compare
      # with, and neither independent nor paired resampling gives an interval that
      # holds the estimate (independent: below zero; paired: above it).
      out.update(self._fid(feats, "recon_fid", interval=False))
    return out

  def samples(self, x: np.ndarray, key: str = "sample_fid") -> dict:
    if not self.labelled:
      return {}
    _, feats = self.predict(np.clip(x, -1.0, 1.0))
    return {**self._fid(feats, key, interval=True), f"{key}_num": float(len(x))}

  def probe(self, train_z, train_y, test_z, test_y) -> dict:
    if not self.labelled:
      return {}
    acc = metrics.linear_probe(
      train_z, train_y, test_z, test_y, self.config.eval.probe_max_iter, self.config.seed
    )
    return {"linear_probe_accuracy": acc}


@dataclasses.dataclass
class Result:
  metrics: dict[str, float]  # prefixed `<name>/`
  reconstructions: dict[str, np.ndarray]  # protocol -> [N, H, W, C] of the test images
  samples: np.ndarray  # [num_samples, H, W, C] decoded prior draws


def _encode_split(ae: Autoencoder, split: sources.Split, batch: int, limit=None):
  """(codes [N, L], rates [N], labels [N], images [N, ...]) over the split, in order."""
  codes, rates, labels, images = [], [], [], []
  for b in pipeline.eval_batches(split, batch, limit):
    v = b["valid"]
    codes.append(ae.encode(b["image"])[v])
    rates.append(ae.rate(b["image"])[v])
    labels.append(b["label"][v])
    images.append(b["image"][v])
  return tuple(np.concatenate(a) for a in (codes, rates, labels, images))


def decode_all(
  ae: Autoencoder, z: np.ndarray, batch: int, seed: int, protocol: str
) -> tuple[np.ndarray, float]:
  """x decoded from z [N, L] with `protocol` in padded batches (batch i keyed
  fold_in(seed, i)); returns (x, seconds spent decoding)."""
  seconds, counter = 0.0, iter(range(len(z)))
  countdown = eta.Countdown(f"{ae.name}: {protocol} decodes", math.ceil(len(z) / batch), "batches")

  def one(zb):
    nonlocal seconds
    preemption.exit_if_requested(
      "during evaluation (the models evaluated before this one are kept)"
    )
    i = next(counter)
    key = jax.random.fold_in(jax.random.key(seed), i)
    t0 = time.perf_counter()
    out = ae.decode(zb, key, protocol)
    seconds += time.perf_counter() - t0
    countdown.update(i + 1)
    return out

  return pipeline.map_batched(one, z, batch), seconds


def _inverted_all(ae: Autoencoder, x: np.ndarray, z: np.ndarray, batch: int):
  """(reconstructions from z and x's inverted noise, seconds) in padded batches."""
  seconds = 0.0

  def one(xb, zb):
    nonlocal seconds
    preemption.exit_if_requested(
      "during evaluation (the models evaluated before this one are kept)"
    )
    t0 = time.perf_counter()
    out = ae.reconstruct_inverted(xb, zb)
    seconds += time.perf_counter() - t0
    return out

  return pipeline.map_batched(one, (x, z), batch), seconds


def decode_protocols(
  ae: Autoencoder, z: np.ndarray, config, x: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, float]]:
  """protocol -> (decodes of z [N, L], seconds per image) for each of eval.protocols.

  `mean` averages eval.mean_decodes `sample` decodes (the first is the `sample`
  protocol's own, so it costs K - 1 more), unless the model knows E[x | z].
  `inverted` decodes from x's [N, ...] own encoded noise, where the model can
  (skipped for the others, and when x is not given)."""
  ev, seed = config.eval, config.seed
  padded = math.ceil(len(z) / ev.batch_size) * ev.batch_size
  out, draws = {}, []

  def draw(i: int) -> tuple[np.ndarray, float]:
    while len(draws) <= i:
      draws.append(decode_all(ae, z, ev.batch_size, seed + 1000 * len(draws), "sample"))
    return draws[i]

  for protocol in ev.protocols:
    if protocol == "inverted":
      if ae.invertible and x is not None:
        ae.compile_decode(np.zeros((ev.batch_size, ae.latent_dim), np.float32), protocol)
        rec, secs = _inverted_all(ae, x, z, ev.batch_size)
        out[protocol] = (rec, secs / padded)
      continue
    ae.compile_decode(np.zeros((ev.batch_size, ae.latent_dim), np.float32), protocol)
    # (not `x`: that is the images, which `inverted` must still see after the others)
    if protocol == "sample":
      rec, secs = draw(0)
    elif protocol == "mean" and not ae.exact_mean:
      parts = [draw(i) for i in range(ev.mean_decodes)]
      rec = np.mean([p[0] for p in parts], axis=0)
      secs = sum(p[1] for p in parts)
    else:  # "mode", or the exact mean (== "mode" for a Gaussian decoder)
      decoded = "mode" if protocol == "mean" else protocol
      rec, secs = decode_all(ae, z, ev.batch_size, seed, decoded)
    out[protocol] = (rec, secs / padded)
  return out


def evaluate_autoencoder(
  ae: Autoencoder, config, judge: Judge, splits: dict[str, sources.Split], store=None
) -> Result:
  """Every metric of `ae` on the test split (eval.num_test images; 0 = all). store: a
  parts.Store that keeps the batches of the model's likelihood solves."""
  ev, seed = config.eval, config.seed
  test = splits["test"]
  mu, rates, labels, x = _encode_split(ae, test, ev.batch_size, ev.num_test or None)
  out, recs = {}, {}
  for protocol, (rec, secs) in decode_protocols(ae, mu, config, x).items():
    recs[protocol] = rec
    for k, v in judge.recon(x, rec, labels if test.has_labels else None).items():
      out[f"{protocol}/{k}"] = v
    out[f"{protocol}/time_per_image"] = secs
  out["rate_nats"] = float(np.mean(rates))
  z = ae.prior_sample(ev.num_samples, jax.random.key(seed + 1))
  samples, _ = decode_all(ae, z, ev.batch_size, seed + 2, "sample")
  out.update(judge.samples(samples))
  if ae.learned_prior:  # the same decodes of N(0, I) codes, for the comparison
    z = ae.prior_sample(ev.num_samples, jax.random.key(seed + 1), standard_normal=True)
    plain, _ = decode_all(ae, z, ev.batch_size, seed + 2, "sample")
    out.update(judge.samples(plain, "sample_fid_standard_normal"))
  n = min(len(x), ev.elbo_num_images)
  hooks = SolveHooks(
    f"{ae.name}/neg_elbo_bits_per_dim",
    store or parts.Nowhere(),
    -(-n // max(min(n, ev.batch_size), 1)),
    ev.bpd_max_steps,
  )
  extra = ae.extra_metrics(x, ev.batch_size, seed, hooks)
  if "neg_elbo_bits_per_dim_converged" in extra:
    warn_unconverged(f"{ae.name}/neg_elbo_bits_per_dim", extra, "neg_elbo_bits_per_dim")
  out.update(extra)
  train = splits["train"]
  with_factors = train.factors is not None and test.factors is not None
  if judge.labelled or with_factors:  # probes fit on all of train, scored on all of test
    train_z, _, train_y, _ = _encode_split(ae, train, ev.batch_size)
    test_z, test_y = mu, labels
    if len(mu) < len(test):
      test_z, _, test_y, _ = _encode_split(ae, test, ev.batch_size)
    out.update(judge.probe(train_z, train_y, test_z, test_y))
    if with_factors:
      out.update(
        factors.metrics(
          train_z, train.factors, test_z, test.factors, ev.probe_max_iter, config.seed
        )
      )
  return Result({f"{ae.name}/{k}": float(v) for k, v in out.items()}, recs, samples)


class SolveHooks(likelihood.BatchHooks):
  """A likelihood solve inside an evaluation: each batch's result kept as a part
  (`parts.Store`: a rerun after preemption solves only the batches that are missing),
  a SIGTERM honoured between pieces (exit 143), and a progress line with the solver's t,
  steps against eval.bpd_max_steps and the time spent."""

  def __init__(self, what: str, store: parts.Store, num_batches: int, max_steps: int):
    self.what, self.store, self.max_steps = what, store, max_steps
    self.countdown = eta.Countdown(what, num_batches, "batches")
    self.t_batch = time.perf_counter()
    self.done, self.first_seen = 0, None

  def load(self, i):
    found = self.store.load(f"{self.what}/batch{i}")
    if found is not None:
      self.done += 1
      return found[0]
    self.t_batch = time.perf_counter()
    return None

  def save(self, i, result):
    self.store.save(f"{self.what}/batch{i}", result)
    self.done += 1
    note = f"{result['steps']} solver steps" + ("" if result["ok"] else ", did not converge")
    self.countdown.update(self.done, note)

  def between(self, i, progress):
    preemption.exit_if_requested(f"in {self.what}, batch {i} (earlier batches are kept)")
    now, steps = time.perf_counter(), progress["steps"]
    where = f"{self.what}: batch {i} at t = {progress['t']:.3f} after {steps} solver steps"
    if i != self.first_seen:  # its first piece (with the compile, on the first batch)
      self.first_seen, self.first = i, (now, steps)
      log.info("%s (%s; budget %d steps)", where, eta.duration(now - self.t_batch), self.max_steps)
    elif self.countdown.due():
      rate = (now - self.first[0]) / max(steps - self.first[1], 1)
      rest = rate * max(self.max_steps - steps, 0)
      log.info(
        "%s (%s; %.0f ms a step: the budget of %d steps ends within %s)",
        where,
        eta.duration(now - self.t_batch),
        1e3 * rate,
        self.max_steps,
        eta.duration(rest),
      )


def warn_unconverged(what: str, metrics: dict[str, float], key: str) -> None:
  share = metrics[f"{key}_converged"]
  if share < 1.0:
    log.warning(
      "%s: the PF-ODE solve did not reach t = 1 within eval.bpd_max_steps for %.0f%% of "
      "the images (reported as NaN); raise eval.bpd_max_steps or loosen eval.bpd_rtol / "
      "eval.bpd_atol",
      what,
      100 * (1 - share),
    )


def score_model_bpd(config, score_params, x: np.ndarray, store=None) -> dict[str, float]:
  """Mean bits per dim of x [N, H, W, C] under the score model's PF ODE, dequantised
  (score_model/bits_per_dim, NaN unless every solve converged; its _converged share;
  score_model/bpd_solver_steps). store: a parts.Store keeping each batch's result."""
  ev = config.eval
  sde = sde_lib.from_config(config.sde)
  levels = sources.data_levels(config.data, config.eval)
  model = score.model_from_config(config.model, config.sde)
  pieces = likelihood.Pieces(
    lambda params: score.score_fn_from_eps(score.eps_fn_for(model, params, config.model), sde),
    sde,
    exact_max_dim=ev.exact_trace_max_dim,
    **likelihood.solver_options(ev),
  )
  d = math.prod(x.shape[1:])

  @jax.jit
  def dequantized(xb, key):
    return likelihood.dequantize(xb, levels, key) if ev.dequantize else xb

  def solve(xb, i, between):
    k_deq, k_probe = jax.random.split(jax.random.key(config.seed + 100 + i))
    logp, stats = pieces(score_params, dequantized(jnp.asarray(xb), k_deq), k_probe, between)
    return likelihood.bits_per_dim(logp, d, levels), stats

  batch = min(ev.batch_size, len(x))
  hooks = SolveHooks(
    "score_model/bits_per_dim", store or parts.Nowhere(), -(-len(x) // batch), ev.bpd_max_steps
  )
  out = likelihood.solve_batches(solve, x, batch, False, hooks)
  metrics = likelihood.summary("score_model/bits_per_dim", out, "score_model/bpd_solver_steps")
  warn_unconverged("score_model/bits_per_dim", metrics, "score_model/bits_per_dim")
  return metrics
