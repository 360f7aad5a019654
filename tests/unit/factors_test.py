"""Factor metrics on codes whose answers are known: a permuted, rescaled copy of the
factors is perfect; noise scores near 0; a rotated copy is informative but not
disentangled."""

import numpy as np
import pytest

from vdae.data.sources import Factors
from vdae.evaluation import factors


def _factors(n, seed, kinds=("continuous",) * 4):
  rng = np.random.default_rng(seed)
  cols = []
  for kind in kinds:
    if kind == "categorical":
      cols.append(rng.integers(0, 3, n).astype(np.float32))
    elif kind == "circular":
      cols.append(rng.uniform(0, 2 * np.pi, n).astype(np.float32))
    else:
      cols.append(rng.uniform(-1, 1, n).astype(np.float32))
  names = tuple(f"f{j}" for j in range(len(kinds)))
  return Factors(names, tuple(kinds), np.stack(cols, 1))


def _copy(f: Factors, perm, scale, shift):
  """Codes: each factor rescaled and shifted, the columns permuted."""
  return (f.values * scale + shift)[:, perm]


@pytest.mark.timeout(60)
def test_a_permuted_rescaled_copy_scores_one_everywhere():
  tr, te = _factors(800, 0), _factors(2000, 1)
  perm, scale, shift = [2, 0, 3, 1], np.array([3.0, -0.5, 10.0, 0.1]), np.array([1.0, 2, -3, 0])
  out = factors.metrics(_copy(tr, perm, scale, shift), tr, _copy(te, perm, scale, shift), te)
  for j in range(4):
    assert out[f"factors/f{j}/r2"] == pytest.approx(1.0, abs=1e-9)
  assert out["dci/disentanglement"] == pytest.approx(1.0, abs=1e-6)
  assert out["dci/completeness"] == pytest.approx(1.0, abs=1e-6)
  assert out["dci/informativeness"] == pytest.approx(1.0, abs=1e-9)
  # Equal-width bins of an affine copy are the factor's own bins: I = H = log 20 for
  # the right code; the runner-up has only the plug-in estimator's bias, about
  # (bins - 1)^2 / (2 N) = 0.09 nats at N = 2000, so MIG is about 1 - 0.09 / 3.0.
  assert out["mig"] > 0.93


@pytest.mark.timeout(60)
def test_categorical_and_circular_factors_are_read_back():
  kinds = ("categorical", "circular", "continuous")
  tr, te = _factors(900, 2, kinds), _factors(600, 3, kinds)

  def code(f):  # the class as a number, the angle as (sin, cos), the value
    v = f.values
    return np.stack([2.0 * v[:, 0], np.sin(v[:, 1]), 3.0 * np.cos(v[:, 1]), v[:, 2]], 1)

  out = factors.metrics(code(tr), tr, code(te), te)
  assert out["factors/f0/accuracy"] == 1.0  # three classes in order on one line: separable
  assert out["factors/f1/r2"] == pytest.approx(1.0, abs=1e-9)
  assert out["factors/f2/r2"] == pytest.approx(1.0, abs=1e-9)
  assert out["dci/informativeness"] == pytest.approx(1.0, abs=1e-9)
  # Each code serves one factor (D near 1); the angle needs two codes (C below 1).
  assert out["dci/disentanglement"] > 0.95
  assert out["dci/completeness"] < 0.95


@pytest.mark.timeout(60)
def test_noise_codes_score_near_zero():
  kinds = ("categorical", "circular", "continuous", "continuous")
  tr, te = _factors(1000, 4, kinds), _factors(1000, 5, kinds)
  rng = np.random.default_rng(6)
  out = factors.metrics(rng.normal(size=(1000, 6)), tr, rng.normal(size=(1000, 6)), te)
  for name in ("f1", "f2", "f3"):
    assert out[f"factors/{name}/r2"] < 0.02
  assert abs(out["factors/f0/accuracy"] - 1 / 3) < 0.06
  assert out["dci/informativeness"] < 0.03
  assert out["mig"] < 0.02
  # Importances of noise spread over factors and codes: far from 1 (not 0: the
  # entropy of a finite random split is below its maximum).
  assert out["dci/disentanglement"] < 0.35 and out["dci/completeness"] < 0.35


@pytest.mark.timeout(60)
def test_a_rotated_copy_is_informative_but_not_disentangled():
  """z = R f with R a 45-degree rotation: each code is half of each factor. The
  probe reads both factors back (R^2 = 1), but D = C = 0 and the MIG is small."""
  tr, te = _factors(1000, 7, ("continuous",) * 2), _factors(1000, 8, ("continuous",) * 2)
  rot = np.array([[1.0, 1.0], [1.0, -1.0]]) / np.sqrt(2.0)
  out = factors.metrics(tr.values @ rot, tr, te.values @ rot, te)
  assert out["factors/f0/r2"] == pytest.approx(1.0, abs=1e-9)
  assert out["dci/disentanglement"] == pytest.approx(0.0, abs=1e-6)
  assert out["dci/completeness"] == pytest.approx(0.0, abs=1e-6)
  assert out["mig"] < 0.1
  # Against the unrotated copy, the same metric must see the difference.
  plain = factors.metrics(tr.values, tr, te.values, te)
  assert plain["dci/disentanglement"] > 0.99 and plain["mig"] > 0.8
