"""What the stage-2 objective pays the encoder for, noise level by noise level: why a
VDAE's code carries some factors and leaves others out.

  python -m vdae.benchmarks.stage2_gain --config=configs/shapes.py --workdir=W \
      [--set stage2.weighting=... ...] [--num 2048] [--json OUT] [--plot PNG]

On W's trained stages 1 and 2, for each t of a grid over [sde.eps, 1], on --num
train images with one fixed noise draw:

  uncond  1/2 E||eps_theta(x_t, t) - n||^2            the frozen score model alone
  cond    1/2 E||eps_theta - sigma c(x_t, t, z) - n||^2  with z ~ q(z | x_0), as stage 2
  gain    uncond - cond: what the code is worth at t. With stage2.weighting=none the
          objective is the mean over t ~ U[eps, 1] of cond, so the encoder is paid
          for a factor only through the gain where that factor is still unknown.
  x0_gain (sigma / alpha)^2 * gain: the same gain in pixels, 1/2 E||x0 - x0_hat||^2
          (the units of a VAE's reconstruction term), which the eps-space objective
          weighs by (alpha / sigma)^2.

With --judge, also the judge CNN's error on each factor of the denoised estimate
x0_hat(x_t), from the score model alone and with the code (up to 512 images).

Then the rate (KL of q(z | x_0) to N(0, I), nats) and, for data with factors, each
factor's linear-probe score from the code (posterior means) and from the noisy image
x_t itself (its pixels and per-channel mean and mean square, standardised; ridge
fitted on the first half of the images, scored on the second; R^2, sin/cos R^2 for
angles, accuracy for classes): up to which t the
factor can be read off x_t without any code. A factor readable from x_t wherever
gain is weighed is one the objective never asks the encoder to carry. Only the
train split is read: nothing here can tune on the test split.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders import registry
from vdae.benchmarks import bench_pipeline, common, time_to_quality
from vdae.data.sources import Factors
from vdae.diffusion import score
from vdae.diffusion import sde as sde_lib
from vdae.evaluation import classifier
from vdae.evaluation import factors as factor_metrics
from vdae.io.errors import ConfigError, VdaeError
from vdae.latent import correction
from vdae.parallel import runtime
from vdae.training import stages


def _noised(ae, config):
  """jit(enc_params, x0 [B, ...], t, key) -> (x_t, n, eps, eps_c, alpha, sigma): one noise
  draw n at time t, the score model's noise prediction alone (eps) and corrected by the
  code z ~ q(z | x_0) as stage 2 trains it (eps_c = eps - sigma c)."""
  sde = sde_lib.from_config(config.sde)
  eps_fn = score.eps_fn_for(ae.score_model, ae.score_params, config.model)
  lv = config.encoder.logvar_term

  @jax.jit
  def run(enc_params, x, t, key):
    kn, kz = jax.random.split(key)
    tb = jnp.full((x.shape[0],), t, jnp.float32)
    n = jax.random.normal(kn, x.shape, jnp.float32)
    xt = sde.perturb(x, tb, n)
    encode = lambda xx, tt: ae.encoder.apply(enc_params, xx, tt)
    mu, logvar = encode(x, jnp.zeros_like(tb))
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(kz, mu.shape)
    alpha, sigma = (a[:, None, None, None] for a in sde.marginal(tb))
    eps = eps_fn(xt, tb)
    eps_c = eps - sigma * correction.correction_score(encode, xt, tb, z, lv)
    return xt, n, eps, eps_c, alpha, sigma

  return run


def _per_t(ae, config, x0: np.ndarray, ts, seed: int, batch: int, reduce):
  """[reduce(x_t, n, eps, eps_c, alpha, sigma) per batch, concatenated] for each t."""
  run, key = _noised(ae, config), jax.random.PRNGKey(seed)
  for i, t in enumerate(ts):
    parts = []
    for s in range(0, len(x0), batch):
      k = jax.random.fold_in(key, i * 7919 + s)
      parts.append(reduce(*run(ae.enc_params, jnp.asarray(x0[s : s + batch]), t, k)))
    yield [np.concatenate([np.asarray(p[m]) for p in parts]) for m in range(len(parts[0]))]


def per_t_losses(ae, config, x0: np.ndarray, ts: np.ndarray, seed: int, batch: int = 128):
  """{uncond, cond, alpha, sigma} [len(ts)] on images x0 [N, ...], one noise draw per t."""
  sq = lambda r: 0.5 * jnp.sum(r.reshape(r.shape[0], -1) ** 2, -1)
  reduce = lambda xt, n, eps, eps_c, alpha, sigma: (sq(eps - n), sq(eps_c - n))
  rows = {"uncond": [], "cond": []}
  for u, c in _per_t(ae, config, x0, ts, seed, batch, reduce):
    rows["uncond"].append(float(np.mean(u)))
    rows["cond"].append(float(np.mean(c)))
  alpha, sigma = sde_lib.from_config(config.sde).marginal(jnp.asarray(ts, jnp.float32))
  rows["alpha"], rows["sigma"] = np.asarray(alpha).tolist(), np.asarray(sigma).tolist()
  return rows


def judge_reads(ae, config, x0: np.ndarray, f: Factors, ts, read, seed: int, batch: int = 128):
  """{"uncond"|"cond": {factor: [judge error per t]}}: the judge's error (error rate,
  mean angular error in radians, RMSE) on the denoised estimates x0_hat(x_t) of the
  score model alone and with the code: what each factor's code adds at each t, read
  by a nonlinear reader (a linear probe reads hue poorly even from x_0)."""
  hat = lambda xt, e, alpha, sigma: jnp.clip((xt - sigma * e) / alpha, -1.0, 1.0)
  reduce = lambda xt, n, eps, eps_c, a, s: (hat(xt, eps, a, s), hat(xt, eps_c, a, s))
  out = {"uncond": {n: [] for n in f.names}, "cond": {n: [] for n in f.names}}
  for hats in _per_t(ae, config, x0, ts, seed + 1, batch, reduce):
    for which, h in zip(("uncond", "cond"), hats):
      errors = classifier.factor_errors(read(h), f)
      for name in f.names:
        out[which][name].append(errors[name])
  return out


def _features(xt: np.ndarray) -> np.ndarray:
  """Pixels plus each channel's spatial mean and mean square: a linear reader of
  global colour that noise averaged over the image cannot hide."""
  flat = xt.reshape(len(xt), -1, xt.shape[-1])
  return np.concatenate([flat.reshape(len(xt), -1), flat.mean(1), (flat**2).mean(1)], 1)


def _probe_scores(train_x, train_f: Factors, test_x, test_f: Factors) -> list[float]:
  """Per factor: ridge R^2 (sin/cos for angles; the penalty chosen by leave-one-out
  on the fitting half) or L2-penalised logistic accuracy for classes."""
  from sklearn.linear_model import LogisticRegression, RidgeCV
  from sklearn.metrics import r2_score
  from sklearn.preprocessing import StandardScaler

  scaler = StandardScaler().fit(train_x)
  a, b = scaler.transform(train_x), scaler.transform(test_x)
  out = []
  for j, kind in enumerate(train_f.kinds):
    ytr, yte = train_f.values[:, j], test_f.values[:, j]
    if kind == "categorical":
      model = LogisticRegression(C=0.01, max_iter=2000).fit(a, ytr.astype(int))
      out.append(float(np.mean(model.predict(b) == yte.astype(int))))
      continue
    if kind == "circular":
      ytr, yte = factor_metrics.circle(ytr), factor_metrics.circle(yte)
    else:
      ytr, yte = ytr[:, None], yte[:, None]
    pred = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(a, ytr).predict(b).reshape(yte.shape)
    out.append(float(r2_score(yte, pred, multioutput="variance_weighted")))
  return out


def readable_from_xt(config, x0: np.ndarray, f: Factors, ts: np.ndarray, seed: int):
  """{factor: [score per t]}: each factor's linear probe from x_t (first half of the
  images fits, second half scores)."""
  sde = sde_lib.from_config(config.sde)
  half = len(x0) // 2
  out = {name: [] for name in f.names}
  rng = np.random.default_rng(seed)
  first, second = f.take(np.arange(half)), f.take(np.arange(half, len(x0)))
  for t in ts:
    n = rng.standard_normal(x0.shape).astype(np.float32)
    tb = jnp.full((len(x0),), t, jnp.float32)
    feats = _features(np.asarray(sde.perturb(jnp.asarray(x0), tb, jnp.asarray(n))))
    for name, s in zip(f.names, _probe_scores(feats[:half], first, feats[half:], second)):
      out[name].append(s)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/shapes.py")
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--set", nargs="*", default=[], help="config overrides group.field=value")
  ap.add_argument(
    "--num", type=int, default=2048, help="train images (half fit the probes, half score them)"
  )
  ap.add_argument(
    "--judge", action="store_true", help="also the judge's errors on x0_hat(x_t), per t"
  )
  ap.add_argument("--json", default="")
  ap.add_argument("--plot", default="")
  args = ap.parse_args()
  config = bench_pipeline.load_config(args.config)
  try:
    time_to_quality.apply_overrides(config, args.set)
  except ConfigError as e:
    ap.error(str(e))
  peak = common.matmul_peak_flops()
  print(f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s", flush=True)
  try:  # a workdir without stages 1 and 2, or trained on another config: one line, exit 2
    ctx = stages.context(config, args.workdir)
    train = ctx.splits["train"]
    x0 = np.asarray(train.arrays(args.num)["image"], np.float32)
    ae = registry.AUTOENCODERS["vdae"].load(config, args.workdir, ctx.mesh, ctx.image_shape)
  except VdaeError as e:
    ap.error(str(e))
  sde = sde_lib.from_config(config.sde)
  ts = np.concatenate([np.geomspace(sde.eps, 0.1, 5, endpoint=False), np.linspace(0.1, 1.0, 10)])
  rows = per_t_losses(ae, config, x0, ts, config.seed)
  rows["t"] = ts.tolist()
  rows["rate_nats"] = float(np.mean(ae.rate(x0)))
  print(f"rate {rows['rate_nats']:.2f} nats (stage2.weighting={config.stage2.weighting})")
  if train.factors is not None:
    f = train.factors.take(np.arange(len(x0)))
    rows["readable_from_xt"] = readable_from_xt(config, x0, f, ts, config.seed)
    half, z = len(x0) // 2, ae.encode(x0)
    scores = _probe_scores(
      z[:half], f.take(np.arange(half)), z[half:], f.take(np.arange(half, len(x0)))
    )
    rows["readable_from_code"] = dict(zip(f.names, scores))
    print(
      "from the code:", ", ".join(f"{n} {v:.3f}" for n, v in rows["readable_from_code"].items())
    )
    if args.judge:
      judge = classifier.load_or_train(config.eval, config.data, args.workdir, ctx.splits)
      model, params, meta = judge
      read = classifier.make_factor_predict(model, params, classifier.codec_from_meta(meta))
      n = min(len(x0), 512)
      judged = judge_reads(ae, config, x0[:n], f.take(np.arange(n)), ts, read, config.seed)
      rows["judge_error_on_x0_hat"] = judged
      print("judge's error on x0_hat(x_t), without / with the code:")
      print(f"{'t':>6}  " + " ".join(f"{m[:13]:>13}" for m in f.names))
      for i, t in enumerate(ts):
        cells = (f"{judged['uncond'][m][i]:6.3f}/{judged['cond'][m][i]:6.3f}" for m in f.names)
        print(f"{t:6.3f}  " + " ".join(cells))
  names = list(rows.get("readable_from_xt", {}))
  head = (
    f"{'t':>6} {'alpha/sig':>9} {'uncond':>9} {'cond':>9} {'gain':>8} {'x0_gain':>9}  "
    + " ".join(f"{n[:7]:>7}" for n in names)
  )
  print(head)
  for i, t in enumerate(ts):
    a, s = rows["alpha"][i], rows["sigma"][i]
    gain = rows["uncond"][i] - rows["cond"][i]
    x0_gain = gain * (s / a) ** 2
    probes = " ".join(f"{rows['readable_from_xt'][n][i]:7.3f}" for n in names)
    losses = f"{rows['uncond'][i]:9.3f} {rows['cond'][i]:9.3f} {gain:8.3f} {x0_gain:9.2f}"
    print(f"{t:6.3f} {a / s:9.3f} {losses}  {probes}")
  # The objective's weight on each interval of the grid (t uniform): the gain's integral.
  total = float(np.trapezoid(np.subtract(rows["uncond"], rows["cond"]), ts))
  print(f"gain integrated over t in [{ts[0]:.3g}, 1]: {total:.3f} nats-equivalent per image")
  out = {
    "config": args.config,
    "overrides": args.set,
    "workdir": args.workdir,
    "num": args.num,
    "matmul_peak_gflops": peak / 1e9,
    **rows,
  }
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(out, fh, indent=1)
  if args.plot:
    plot(rows, args.plot)


def plot(rows, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ts = np.asarray(rows["t"])
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
  a1.plot(ts, np.subtract(rows["uncond"], rows["cond"]), "k.-", label="gain (uncond - cond)")
  a1.set_xlabel("t")
  a1.set_ylabel("eps-space loss per image")
  a1.set_title("what the code is worth at t")
  a1.legend()
  for name, s in rows.get("readable_from_xt", {}).items():
    a2.plot(ts, s, ".-", label=name)
  a2.set_xlabel("t")
  a2.set_ylabel("probe score from x_t")
  a2.set_title("factors readable from x_t without a code")
  a2.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
