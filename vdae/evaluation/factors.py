"""How well codes recover the factors that generated the data: a linear probe per
factor, DCI (Eastwood and Williams 2018) and MIG (Chen et al. 2018).

Keys (under `<model>/`, written by the harness for sources with factors):
  factors/<name>/r2        continuous: R^2 of a linear regression from the codes;
                           circular: R^2 of (sin, cos) of the angle, averaged;
  factors/<name>/accuracy  categorical: logistic regression's accuracy.
  dci/disentanglement, dci/completeness, dci/informativeness
  mig

Every probe is fit on the train split's codes (standardised with train's mean
and sd) and scored on the test split's. DCI's importance of code i for factor j
is the magnitude of i's standardised coefficient in j's probe (summed over
sin/cos or classes), each factor's column normalised to sum to 1 (the linear
version of the paper's Lasso; its random forests would need tuning here).
Disentanglement is 1 minus the entropy (base K) of each code's importances over
the factors, weighted by the code's share of all importance; completeness is 1
minus the entropy (base L) of each factor's importances over the codes,
averaged. Informativeness is the mean probe score, chance-corrected and clipped
to [0, 1]: R^2 as it is, accuracy as (acc - majority rate) / (1 - majority rate).
MIG bins each code and each non-categorical factor into `bins` equal-width bins
on the test split and averages, over factors, the gap between the two codes
with the most mutual information, divided by the factor's entropy.
"""

from __future__ import annotations

import numpy as np

from vdae.data.sources import Factors


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  mu, sd = train.mean(0), train.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  return (train - mu) / sd, (test - mu) / sd


def circle(angle: np.ndarray) -> np.ndarray:
  """Angles [...] in radians -> (sin, cos) [..., 2]: how a circular factor is regressed."""
  return np.stack([np.sin(angle), np.cos(angle)], axis=-1)


def angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a - b wrapped to (-pi, pi]."""
  return np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b))))


def probe(
  train_z: np.ndarray,
  train_f: Factors,
  test_z: np.ndarray,
  test_f: Factors,
  max_iter: int = 1000,
  seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(scores [K], chance-corrected scores [K], importance [L, K]) of a linear probe
  per factor from train codes [N, L] to test codes [M, L]."""
  from sklearn.linear_model import LinearRegression, LogisticRegression
  from sklearn.metrics import r2_score

  ztr, zte = _standardise(np.asarray(train_z, np.float64), np.asarray(test_z, np.float64))
  k = len(train_f.names)
  scores, chance_free, importance = np.zeros(k), np.zeros(k), np.zeros((ztr.shape[1], k))
  for j, kind in enumerate(train_f.kinds):
    ytr, yte = train_f.values[:, j].astype(np.float64), test_f.values[:, j].astype(np.float64)
    if kind == "categorical":
      ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
      if len(np.unique(ytr)) < 2:  # one class: nothing to learn, the majority is right
        scores[j], importance[:, j] = float(np.mean(yte == ytr[0])), 0.0
        continue
      model = LogisticRegression(max_iter=max_iter, random_state=seed).fit(ztr, ytr)
      scores[j] = float(np.mean(model.predict(zte) == yte))
      majority = np.max(np.bincount(ytr)) / len(ytr)
      chance_free[j] = (scores[j] - majority) / (1.0 - majority)
      importance[:, j] = np.abs(model.coef_).sum(0)
      continue
    if kind == "circular":
      ytr, yte = circle(ytr), circle(yte)
    model = LinearRegression().fit(ztr, ytr)
    scores[j] = chance_free[j] = float(r2_score(yte, model.predict(zte)))
    importance[:, j] = np.abs(model.coef_).reshape(-1, ztr.shape[1]).sum(0)
  return scores, np.clip(chance_free, 0.0, 1.0), importance


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
  """Entropy of the distributions p along `axis`, in base `base`; 0 where base < 2."""
  if base < 2:
    return np.zeros(np.delete(p.shape, axis))
  logp = np.log(np.where(p > 0, p, 1.0))
  return -(p * logp).sum(axis) / np.log(base)


def dci(importance: np.ndarray, informativeness: np.ndarray) -> dict[str, float]:
  """Disentanglement, completeness (from importance [L, K]) and informativeness
  (the mean of the chance-corrected scores [K])."""
  num_codes, k = importance.shape
  total = importance.sum(0, keepdims=True)
  r = np.divide(importance, total, out=np.zeros_like(importance), where=total > 0)
  row = r.sum(1)
  p = np.divide(r, row[:, None], out=np.zeros_like(r), where=row[:, None] > 0)
  d_code = 1.0 - _entropy(p, k, axis=1)
  weight = row / row.sum() if row.sum() > 0 else np.zeros_like(row)
  used = total[0] > 0  # a factor no code predicts has no completeness to speak of
  c_factor = 1.0 - _entropy(r, num_codes, axis=0)
  return {
    "disentanglement": float(np.sum(weight * d_code)),
    "completeness": float(np.mean(c_factor[used])) if used.any() else 0.0,
    "informativeness": float(np.mean(informativeness)),
  }


def _bin(values: np.ndarray, bins: int) -> np.ndarray:
  edges = np.histogram_bin_edges(values, bins)
  return np.digitize(values, edges[1:-1])


def mig(z: np.ndarray, f: Factors, bins: int = 20) -> float:
  """Mutual information gap of codes [N, L] against factors (discretised)."""
  from sklearn.metrics import mutual_info_score

  if z.shape[1] < 2:
    return float("nan")  # one code: no second-best to take a gap from
  codes = [_bin(z[:, i], bins) for i in range(z.shape[1])]
  gaps = []
  for j, kind in enumerate(f.kinds):
    v = f.values[:, j]
    v = v.astype(np.int64) if kind == "categorical" else _bin(v, bins)
    h = mutual_info_score(v, v)
    if h <= 0:
      continue
    mi = np.sort([mutual_info_score(v, c) for c in codes])
    gaps.append((mi[-1] - mi[-2]) / h)
  return float(np.mean(gaps)) if gaps else float("nan")


def metrics(
  train_z: np.ndarray,
  train_f: Factors,
  test_z: np.ndarray,
  test_f: Factors,
  max_iter: int = 1000,
  seed: int = 0,
) -> dict[str, float]:
  """Every factor metric of one model's codes, keyed as in the module docstring."""
  scores, chance_free, importance = probe(train_z, train_f, test_z, test_f, max_iter, seed)
  out = {}
  for name, kind, s in zip(train_f.names, train_f.kinds, scores):
    out[f"factors/{name}/{'accuracy' if kind == 'categorical' else 'r2'}"] = float(s)
  out.update({f"dci/{k}": v for k, v in dci(importance, chance_free).items()})
  out["mig"] = mig(np.asarray(test_z), test_f)
  return out
