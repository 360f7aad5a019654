"""Latent edits on codes whose factors are known: each edit moves its own factor by
the asked number of sds and leaves the others; specificity reads that back."""

import numpy as np
import pytest

from vdae.commands import edit


@pytest.mark.timeout(30)
def test_a_continuous_edit_moves_only_its_own_factor_by_k_sds():
  rng = np.random.default_rng(0)
  f = rng.uniform(0, 1, (500, 3))
  scale = np.array([2.0, -0.5, 4.0])
  z = f * scale + 1.0  # a rescaled copy: factor j lives in code j
  sd = edit.factor_sd(f[:, 1], "continuous")
  cols = edit.edited_codes(z[:4], z, f[:, 1], "continuous", (-2.0, 0.0, 1.0), sd)
  assert cols.shape == (3, 4, 3)
  for k, c in zip((-2.0, 0.0, 1.0), cols):
    moved = (c - z[:4]) / scale  # back in factor units
    np.testing.assert_allclose(moved[:, 1], k * sd, atol=1e-9)
    np.testing.assert_allclose(moved[:, [0, 2]], 0.0, atol=1e-9)


@pytest.mark.timeout(30)
def test_a_circular_edit_turns_the_angle_by_k_sds():
  rng = np.random.default_rng(1)
  a = rng.uniform(0, 2 * np.pi, 800)
  z = np.stack([3 * np.sin(a), 3 * np.cos(a), rng.normal(size=800)], 1)
  sd = edit.factor_sd(a, "circular")
  assert sd == pytest.approx(np.pi / np.sqrt(3), rel=0.05)  # uniform on the circle
  cols = edit.edited_codes(z[:5], z, a, "circular", (0.0, 0.5), sd)
  turned = np.arctan2(cols[1][:, 0], cols[1][:, 1])
  np.testing.assert_allclose(np.angle(np.exp(1j * (turned - a[:5]))), 0.5 * sd, atol=1e-6)
  np.testing.assert_allclose(cols[0], z[:5], atol=1e-9)  # zero steps, zero change
  np.testing.assert_allclose(cols[1][:, 2], z[:5, 2], atol=1e-6)  # the noise code stays


@pytest.mark.timeout(30)
def test_a_categorical_edit_moves_to_each_class_mean():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 3, 300).astype(float)
  centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
  z = centres[y.astype(int)] + 0.01 * rng.normal(size=(300, 2))
  cols = edit.edited_codes(z[:6], z, y, "categorical", (), 1.0, own=y[:6])
  assert cols.shape == (3, 6, 2)
  for c in range(3):
    np.testing.assert_allclose(cols[c], np.broadcast_to(centres[c], (6, 2)), atol=0.05)


@pytest.mark.timeout(30)
def test_specificity_reads_an_edit_that_leaks():
  kinds, sds = ("continuous", "continuous", "categorical"), [1.0, 2.0, 1.0]
  base = np.zeros((4, 3))
  clean = np.zeros((2, 4, 3))
  clean[..., 0] = [[-1.0], [1.0]]  # factor 0 moves by one sd, nothing else
  s = edit.specificity(clean, base, 0, kinds, sds)
  assert s == {"effect": 1.0, "leakage": 0.0, "specificity": 1.0}
  leaky = clean.copy()
  leaky[..., 1] = 2.0  # factor 1 moves by one of its sds too; the class flips
  leaky[..., 2] = 1.0
  s = edit.specificity(leaky, base, 0, kinds, sds)
  assert s["leakage"] == pytest.approx(1.0) and s["specificity"] == pytest.approx(0.5)
