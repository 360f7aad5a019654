"""--mode=evaluate: the VDAE (and the VAE baseline, if trained) on the held-out test split.

Writes WORKDIR/eval/metrics.json (flat keys, float values) and `eval/...`
scalars to WORKDIR/tensorboard/eval. Keys (VAE ones prefixed `vae/`):

  recon_mse, recon_psnr      decode(encode(x)) vs x, x in [-1, 1]; the PSNR
                             (peak-to-peak 2) is the mean of per-image PSNRs.
                             Reconstructions are clipped to [-1, 1] first, as
                             for any image that is saved.
  recon_class_accuracy       the evaluation classifier (vdae/classifier.py)
                             gives the reconstruction the original's label.
  linear_probe_accuracy      logistic regression on the encoder means (t = 0),
                             fit on the whole train split, scored on test.
  recon_fid, sample_fid      Fréchet distance in the classifier's penultimate
                             features of reconstructions / prior samples
                             (z ~ N(0, I) decoded) against the whole test split.
  fid_train_vs_test          the same distance for real train images: the floor
                             that sample sizes this small allow.
  bits_per_dim               the score model's PF-ODE likelihood, dequantised
                             (vdae/likelihood.py states the assumptions).
  time_per_image_<method>    seconds per decoded image, em / pc / ode, at
                             eval.batch_size, compile time excluded.
  vae/neg_elbo_bits_per_dim  the VAE's -ELBO in the same units (an upper bound).

Datasets without labels get the label-free metrics (recon_mse, recon_psnr,
bits_per_dim, timings). Evaluation runs in one process; files are written by
process 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdae import classifier, curves, data, decode, fid, files, likelihood, sharding, train, writer
from vdae import sde as sde_lib

log = logging.getLogger(__name__)

ArrayFn = Callable[[np.ndarray], np.ndarray]


# --- small helpers ---------------------------------------------------------------
def batched(fn: Callable, x: np.ndarray, batch: int) -> list[np.ndarray] | np.ndarray:
  """fn over x [N, ...] in fixed-size batches (last one padded: one compile).

  fn returns an array or a tuple of arrays with a leading batch axis; so does this.
  """
  outs = []
  for lo in range(0, len(x), batch):
    xb = x[lo : lo + batch]
    n = len(xb)
    if n < batch:
      xb = np.concatenate([xb, np.repeat(xb[-1:], batch - n, 0)])
    out = fn(xb)
    out = out if isinstance(out, tuple) else (out,)
    outs.append([sharding.to_host(o)[:n] for o in out])  # a gather when multi-process
  cat = [np.concatenate(parts) for parts in zip(*outs, strict=True)]
  return cat[0] if len(cat) == 1 else tuple(cat)


def psnr(x: np.ndarray, y: np.ndarray, peak_to_peak: float = 2.0) -> np.ndarray:
  """Per-image PSNR in dB of x, y [N, ...]: 10 log10(p2p^2 / MSE) -> [N]."""
  mse = np.mean(np.square(x - y).reshape(len(x), -1), axis=-1)
  return 10.0 * np.log10(peak_to_peak**2 / np.maximum(mse, 1e-12))


def linear_probe(
  train_z: np.ndarray,
  train_y: np.ndarray,
  test_z: np.ndarray,
  test_y: np.ndarray,
  max_iter: int,
  seed: int = 0,
) -> float:
  """Test accuracy of a logistic regression fit on standardised codes [N, L]."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)  # a few-step probe is still a probe
    clf.fit(train_z, train_y)
  return float(clf.score(test_z, test_y))


def data_levels(config) -> int:
  """Levels of the raw pixels: eval.data_levels, or 17 for digits (0..16), else 256."""
  if config.eval.data_levels:
    return int(config.eval.data_levels)
  return 17 if config.data.source == "digits" else 256


class _Timer:
  """Logs how long each part of the evaluation took (the budget is what users tune)."""

  def __init__(self, name: str):
    self.name = name

  def __enter__(self):
    self.t0 = time.perf_counter()

  def __exit__(self, *exc):
    log.info("evaluate: %s took %.1f s", self.name, time.perf_counter() - self.t0)


class Judge:
  """The label-dependent metrics: classifier, features, probe. None-safe without labels."""

  def __init__(self, config, workdir: str, splits: dict[str, data.Split]):
    self.config = config
    self.labelled = splits["train"].has_labels and splits["test"].has_labels
    self.metrics: dict[str, float] = {}
    if not self.labelled:
      log.info("the data has no labels: skipping classifier, FID and probe metrics")
      return
    model, params, meta = classifier.load_or_train(config, workdir, splits)
    self.predict = classifier.make_predict(model, params)
    test = splits["test"].arrays()
    _, self.test_feats = self.predict(test["image"])
    n = min(len(splits["train"]), max(config.eval.num_samples, 2))
    _, train_feats = self.predict(splits["train"].arrays(n)["image"])
    self.metrics = {
      "classifier_test_accuracy": float(meta["test_accuracy"]),
      "fid_train_vs_test": fid.fid_from_features(train_feats, self.test_feats),
    }

  def recon(self, x: np.ndarray, rec: np.ndarray, labels: np.ndarray | None) -> dict:
    rec = np.clip(rec, -1.0, 1.0)
    out = {
      "recon_mse": float(np.mean(np.square(rec - x))),
      "recon_psnr": float(np.mean(psnr(rec, x))),
    }
    if self.labelled:
      logits, feats = self.predict(rec)
      out["recon_class_accuracy"] = float(np.mean(logits.argmax(-1) == labels))
      out["recon_fid"] = fid.fid_from_features(feats, self.test_feats)
    return out

  def samples(self, x: np.ndarray) -> dict:
    if not self.labelled:
      return {}
    _, feats = self.predict(np.clip(x, -1.0, 1.0))
    return {"sample_fid": fid.fid_from_features(feats, self.test_feats)}

  def probe(self, encode: ArrayFn, splits: dict[str, data.Split]) -> dict:
    if not self.labelled:
      return {}
    tr, te = splits["train"].arrays(), splits["test"].arrays()
    acc = linear_probe(
      encode(tr["image"]),
      tr["label"],
      encode(te["image"]),
      te["label"],
      self.config.eval.probe_max_iter,
      self.config.seed,
    )
    return {"linear_probe_accuracy": acc}


# --- the VDAE ------------------------------------------------------------------------
def _decoder(m: decode.Models, config, method: str, z0: np.ndarray):
  """AOT-compiled decode for batches shaped like z0 [B, L] with `method`."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.sampling.method = method
  fn = decode.make_decode_fn(m.score_model, m.encoder, cfg, (len(z0), *m.image_shape))
  fn.precompile(m.score_params, m.enc_params, jnp.asarray(z0), jax.random.key(0))
  return fn


def decode_all(m: decode.Models, compiled, z: np.ndarray, batch: int, seed: int):
  """x [N, H, W, C] decoded from z [N, L]; returns (x, seconds spent decoding)."""
  seconds, counter = 0.0, iter(range(len(z)))

  def one(zb):
    nonlocal seconds
    key = jax.random.fold_in(jax.random.key(seed), next(counter))
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(m.score_params, m.enc_params, jnp.asarray(zb), key))
    seconds += time.perf_counter() - t0
    return out

  return batched(one, z, batch), seconds


def eval_vdae(config, m: decode.Models, judge: Judge, test: dict) -> dict[str, float]:
  ev = config.eval
  enc = decode.make_encode_fn(m.encoder)
  encode = lambda x: batched(lambda b: enc(m.enc_params, jnp.asarray(b))[0], x, ev.batch_size)
  mu = encode(test["image"])
  pad = np.zeros((ev.batch_size, mu.shape[1]), np.float32)
  method = config.sampling.method
  compiled = _decoder(m, config, method, pad)
  rec, secs = decode_all(m, compiled, mu, ev.batch_size, config.seed)
  out = judge.recon(test["image"], rec, test.get("label"))
  out[f"time_per_image_{method}"] = secs / (math.ceil(len(mu) / ev.batch_size) * ev.batch_size)
  z = np.asarray(jax.random.normal(jax.random.key(config.seed + 1), (ev.num_samples, mu.shape[1])))
  samples, _ = decode_all(m, compiled, z, ev.batch_size, config.seed + 2)
  out.update(judge.samples(samples))
  for other in ev.timing_methods:
    if other and other != method:
      c = _decoder(m, config, other, pad)
      _, secs = decode_all(m, c, mu[: ev.batch_size], ev.batch_size, config.seed)
      out[f"time_per_image_{other}"] = secs / ev.batch_size
  out.update(judge.probe(encode, m.splits))
  out["_images"] = (rec[:32], samples[:32])  # for TensorBoard, popped by the caller
  return out


# --- likelihood ------------------------------------------------------------------------
def eval_bpd(config, score_model, score_params, x: np.ndarray) -> dict[str, float]:
  """Mean bits per dim of x [N, H, W, C] under the score model (see likelihood.py)."""
  ev = config.eval
  sde = sde_lib.from_config(config.sde)
  levels = data_levels(config)

  def run(params, xb, key):
    eps_fn = train.eps_fn_for(score_model, params, config)

    def score_fn(x, t):
      return -eps_fn(x, t) / sde_lib.bcast(sde.marginal(t)[1], x)

    k_deq, k_probe = jax.random.split(key)
    if ev.dequantize:
      xb = likelihood.dequantize(xb, levels, k_deq)
    logp, stats = likelihood.log_likelihood(
      score_fn,
      xb,
      sde,
      k_probe,
      exact_max_dim=ev.exact_trace_max_dim,
      probes=ev.hutchinson_probes,
      rtol=ev.bpd_rtol,
      atol=ev.bpd_atol,
      solver=ev.bpd_solver,
      max_steps=ev.bpd_max_steps,
    )
    d = math.prod(xb.shape[1:])
    return likelihood.bits_per_dim(logp, d, levels), stats["num_steps"]

  fn = jax.jit(run)
  batch = min(ev.batch_size, len(x))
  bpds, steps = [], []
  for i, lo in enumerate(range(0, len(x), batch)):
    xb = x[lo : lo + batch]
    b, s = fn(score_params, jnp.asarray(xb), jax.random.key(config.seed + 100 + i))
    bpds.append(sharding.to_host(b)[: len(xb)])
    steps.append(int(sharding.to_host(s)))
  bpd = np.concatenate(bpds)
  if not np.all(np.isfinite(bpd)):
    log.warning(
      "bits_per_dim: the ODE solve failed for %d of %d images (raise "
      "eval.bpd_max_steps or the tolerances)",
      int(np.sum(~np.isfinite(bpd))),
      len(bpd),
    )
  return {
    "bits_per_dim": float(np.nanmean(bpd)) if np.any(np.isfinite(bpd)) else float("nan"),
    "bpd_solver_steps": float(np.mean(steps)),
  }


# --- the VAE baseline ------------------------------------------------------------------
def eval_vae(config, workdir: str, judge: Judge, test: dict, splits, mesh) -> dict[str, float]:
  from vdae import vae as vae_lib

  ev = config.eval
  image_shape = tuple(splits["train"].image_shape)
  v, params = vae_lib.load_vae(config, workdir, image_shape, mesh)
  enc = jax.jit(lambda p, x: v.encode(p, x)[0])
  dec = jax.jit(v.decode)
  encode = lambda x: batched(lambda b: enc(params, jnp.asarray(b)), x, ev.batch_size)
  mu = encode(test["image"])
  decode_fn = lambda zb: jax.block_until_ready(dec(params, jnp.asarray(zb)))
  batched(decode_fn, mu[: ev.batch_size], ev.batch_size)  # compile outside the timing
  t0 = time.perf_counter()
  rec = batched(decode_fn, mu, ev.batch_size)
  secs = time.perf_counter() - t0
  out = judge.recon(test["image"], rec, test.get("label"))
  out["time_per_image"] = secs / len(mu)
  z = np.asarray(jax.random.normal(jax.random.key(config.seed + 1), (ev.num_samples, mu.shape[1])))
  out.update(judge.samples(batched(decode_fn, z, ev.batch_size)))
  out.update(judge.probe(encode, splits))
  out["neg_elbo_bits_per_dim"] = _vae_bpd(config, v, params, test["image"])
  out = {f"vae/{k}": val for k, val in out.items()}
  out["_images"] = (np.asarray(rec[:32]),)  # popped by the caller for the comparison grid
  return out


def _vae_bpd(config, v, params, x: np.ndarray) -> float:
  """-ELBO (one z sample per image) on dequantised x, in bits per dim of the discrete data."""
  levels = data_levels(config)
  d = math.prod(x.shape[1:])

  def run(p, xb, key):
    k_deq, k_z = jax.random.split(key)
    if config.eval.dequantize:
      xb = likelihood.dequantize(xb, levels, k_deq)
    nelbo, _ = v.neg_elbo(p, xb, k_z)
    return likelihood.bits_per_dim(-nelbo, d, levels)

  fn = jax.jit(run)
  counter = iter(range(len(x)))
  vals = batched(
    lambda b: fn(params, jnp.asarray(b), jax.random.key(next(counter))), x, config.eval.batch_size
  )
  return float(np.mean(vals))


# --- the mode ------------------------------------------------------------------------
def _stage_step(workdir: str, stage: str) -> int:
  names = files.listdir(os.path.join(workdir, stage, "checkpoints"))
  return max((int(s) for s in names if s.isdigit()), default=0)


def comparison_rows(*sets: np.ndarray, cols: int = 8) -> np.ndarray:
  """Interleaves row blocks of `cols` images: set 0, set 1, ... then the next block."""
  n = min(len(x) for x in sets)
  cols = min(cols, n)
  n = n // cols * cols
  return np.concatenate([x[i : i + cols] for i in range(0, n, cols) for x in sets])


def write_metrics(workdir: str, metrics: dict[str, float], step: int, images=None) -> str:
  """WORKDIR/eval/metrics.json and `eval/<key>` scalars (process 0 only)."""
  path = os.path.join(workdir, "eval", "metrics.json")
  if jax.process_index() != 0:
    return path
  files.write_json(path, metrics)
  tb = writer.Writer(os.path.join(workdir, "tensorboard", "eval"))
  try:
    tb.scalars(step, {f"eval/{k}": v for k, v in metrics.items() if math.isfinite(v)})
    for tag, ims in (images or {}).items():
      tb.image(step, f"eval/{tag}", ims)
      g = writer.grid(ims, 8)
      writer.save_png(
        os.path.join(workdir, "eval", f"{tag}.png"), g, writer.auto_scale(ims.shape[1])
      )
  finally:
    tb.close()
  return path


def evaluate(config, workdir: str) -> dict[str, float]:
  """Every metric this workdir's checkpoints allow; returns them and writes them."""
  from vdae import vae as vae_lib

  ev = config.eval
  splits = data.load_splits(config.data)
  test = splits["test"].arrays(ev.num_test or None)
  if not splits["test"].has_labels:
    test.pop("label")
  with _Timer("classifier"):
    judge = Judge(config, workdir, splits)
  metrics = dict(judge.metrics)
  images = {}
  has_stage2 = files.isdir(os.path.join(workdir, "stage2", "checkpoints"))
  if has_stage2:
    m = decode.Models(config, workdir)
    score_model, score_params, mesh = m.score_model, m.score_params, m.mesh
    with _Timer("VDAE reconstructions, samples, timings, probe"):
      out = eval_vdae(config, m, judge, test)
    rec, samples = out.pop("_images")
    vdae_rec = rec
    images = {"reconstructions": np.concatenate([test["image"][:32], rec]), "samples": samples}
    metrics.update(out)
  else:
    log.warning("no encoder checkpoint in %s/stage2: skipping the VDAE metrics", workdir)
    mesh = sharding.make_mesh(config.mesh)
    score_model, score_params, _ = train.load_score_model(
      config,
      config.stage2.stage1_workdir or workdir,
      mesh,
      splits["train"].image_shape,
      config.sampling.use_ema,
    )
  if ev.bpd_num_images:
    with _Timer("bits_per_dim"):
      metrics.update(
        eval_bpd(
          config, score_model, score_params, splits["test"].arrays(ev.bpd_num_images)["image"]
        )
      )
  if vae_lib.has_checkpoint(workdir):
    with _Timer("VAE"):
      out = eval_vae(config, workdir, judge, test, splits, mesh)
    (vae_rec,) = out.pop("_images")
    metrics.update(out)
    if "reconstructions" in images:
      images["comparison"] = comparison_rows(test["image"][:32], vae_rec, vdae_rec)
  metrics = {k: float(v) for k, v in metrics.items()}
  step = _stage_step(workdir, "stage2") or _stage_step(workdir, "stage1")
  path = write_metrics(workdir, metrics, step, images)
  if jax.process_index() == 0:
    curves.plot_loss_curves(workdir, os.path.join(workdir, "eval", "loss_curves.png"))
  log.info("evaluation metrics -> %s\n%s", path, json.dumps(metrics, indent=1, sort_keys=True))
  return metrics
