"""SDE marginals and coefficients against closed forms and each other."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import gaussian
from vdae.diffusion import losses
from vdae.diffusion import sde as sde_lib

KINDS = ("vp", "subvp", "ve")


def test_vp_marginal_closed_form():
  sde = sde_lib.make("vp", beta_min=0.1, beta_max=20.0)
  t = jnp.array([0.0, 0.25, 0.5, 1.0])
  alpha, sigma = sde.marginal(t)
  expected = np.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
  np.testing.assert_allclose(alpha, expected, rtol=1e-6)
  np.testing.assert_allclose(sigma**2, 1 - expected**2, rtol=1e-5, atol=1e-7)
  assert float(sigma[-1]) == pytest.approx(1.0, abs=1e-4)  # prior is N(0, I)


def test_subvp_and_ve_marginals():
  sub = sde_lib.make("subvp")
  t = jnp.array([0.1, 0.5, 1.0])
  alpha, sigma = sub.marginal(t)
  np.testing.assert_allclose(sigma, 1 - alpha**2, rtol=1e-6)
  ve = sde_lib.make("ve", sigma_min=0.01, sigma_max=50.0)
  alpha, sigma = ve.marginal(t)
  np.testing.assert_allclose(alpha, 1.0)
  np.testing.assert_allclose(sigma, 0.01 * 5000.0 ** np.asarray(t), rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_coefficients_match_marginals(kind):
  """For a linear SDE the marginal variance obeys dV/dt = 2 f V + g^2 and the
  mean d(alpha)/dt = f alpha, for any data variance: checks drift and
  diffusion against the marginal formulas (a wrong sign or factor fails)."""
  sde = sde_lib.make(kind)
  for s2 in (0.0, 0.3, 2.0):
    for t0 in (0.05, 0.3, 0.7, 0.95):
      var = lambda t, s2=s2: sde.marginal(t)[0] ** 2 * s2 + sde.marginal(t)[1] ** 2
      t = jnp.array([t0])
      dvar = jax.jacfwd(lambda tt, var=var: var(tt)[0])(t)[0]
      f, g2 = sde.sde_coefficients(t)
      np.testing.assert_allclose(dvar, 2 * f[0] * var(t)[0] + g2[0], rtol=2e-3, atol=1e-5)
      dalpha = jax.jacfwd(lambda tt: sde.marginal(tt)[0][0])(t)[0]
      np.testing.assert_allclose(dalpha, f[0] * sde.marginal(t)[0][0], rtol=2e-3, atol=1e-6)


def test_prior_logp_is_standard_normal_density():
  sde = sde_lib.make("ve", sigma_max=3.0)
  z = jnp.array([[0.5, -1.0, 2.0]])
  expected = sum(-0.5 * math.log(2 * math.pi * 9.0) - 0.5 * v**2 / 9.0 for v in (0.5, -1.0, 2.0))
  assert float(sde.prior_logp(z)[0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_dsm_loss_of_exact_eps_is_its_analytic_minimum(kind):
  """With the exact noise predictor, E||eps* - n||^2 = E_t sum_d alpha^2 s^2 / var_t."""
  sde = sde_lib.make(kind)
  d, b = 4, 20000
  m = jnp.array([0.5, -0.3, 0.0, 0.2])
  s2 = jnp.array([0.2, 0.5, 1.0, 0.05])
  key = jax.random.key(0)
  x0 = m + jnp.sqrt(s2) * jax.random.normal(jax.random.key(1), (b, d))
  eps_fn = lambda x, t: gaussian.exact_eps(sde, m, s2)(x, t)
  loss, _ = losses.dsm_loss(eps_fn, x0, key, sde, likelihood_weighting=False)
  t = losses.sample_time(jax.random.split(key)[0], b, sde.eps)
  alpha, _ = sde.marginal(t)
  expected = jnp.mean(jnp.sum(alpha[:, None] ** 2 * s2 / gaussian.var_t(sde, t, s2), -1))
  assert float(loss) == pytest.approx(float(expected), rel=0.03)
  wrong, _ = losses.dsm_loss(lambda x, t: -eps_fn(x, t), x0, key, sde, False)
  assert float(wrong) > 2 * float(loss)


def test_stratified_time_covers_every_stratum():
  t = losses.sample_time(jax.random.key(3), 8, 1e-3, "stratified")
  u = (np.sort(np.asarray(t)) - 1e-3) / (1 - 1e-3)
  assert np.all((u >= np.arange(8) / 8 - 1e-6) | (u < 1 / 8))  # one draw per 1/8 stratum (mod 1)
  counts = np.histogram(u, bins=8, range=(0, 1))[0]
  np.testing.assert_array_equal(counts, np.ones(8))


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_time_of_noise_level_inverts_the_marginal(kind):
  sde = sde_lib.make(kind)
  t = jnp.linspace(sde.eps, 1.0, 50)
  alpha, sigma = sde.marginal(t)
  np.testing.assert_allclose(sde.time_of_noise_level(sigma / alpha), t, rtol=1e-4, atol=1e-6)
