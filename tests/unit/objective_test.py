"""The likelihood-weighted stage-2 objective is the diffusion ELBO in nats (exact Gaussians)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from tests.support import gaussian
from vdae.diffusion import losses
from vdae.diffusion import sde as sde_lib
from vdae.kernels import fused_step
from vdae.latent import objective

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("method", ["uniform", "stratified"])
def test_importance_time_is_unbiased_for_the_lambda_integral(kind, method):
  """E[w h(t)] = int lambda h dt on [eps, 1] for h = 1 and h = t (a fine trapezoid on
  a log grid as truth)."""
  sde = sde_lib.make(kind)
  grid = np.geomspace(sde.eps, 1.0, 200001).astype(np.float32)
  lam = np.asarray(losses.likelihood_weight(sde, jnp.asarray(grid)), np.float64)
  for h in (lambda t: 1.0, lambda t: t):
    truth = integrate.trapezoid(lam * h(grid), grid)
    est = []
    for i in range(8):
      t, w = losses.importance_time(jax.random.key(i), 20000, sde, method)
      assert float(t.min()) >= sde.eps and float(t.max()) <= 1.0
      est.append(float(jnp.mean(w * h(t))))
    np.testing.assert_allclose(np.mean(est), truth, rtol=0.01)


M = jnp.array([0.5, -0.3])
S2 = jnp.array([0.25, 0.25])


def _recon(x0, weighting, n=100000):
  """The stage-2 reconstruction term for n copies of the point x0 [D], with the exact
  unconditional score of N(M, S2) and an encoder that ignores x (so c = 0)."""
  sde = sde_lib.make("vp")
  spec = fused_step.StepSpec(sde, 8, 1000.0)
  eps = gaussian.exact_eps(sde, M, S2)
  encode = lambda x, t: (jnp.zeros((x.shape[0], 2)), jnp.zeros((x.shape[0], 2)))
  _, aux = objective.vdae_loss(
    lambda x, t: eps(x, t),
    encode,
    jnp.broadcast_to(x0, (n, 2)),
    jax.random.key(0),
    sde,
    spec,
    beta_kl=0.0,
    weighting=weighting,
    time_sampling="stratified",
    kernel="reference",
  )
  return float(aux["recon"])


def test_likelihood_weighted_objective_is_the_negative_log_likelihood_up_to_a_constant():
  """With the exact score, 1/2 int lambda E||eps - n||^2 dt = -log p(x0) + C, C the same
  for every x0: differences between points are differences of Gaussian NLLs. The
  unweighted loss does not have this property (the check would fail without lambda)."""
  pts = [M, M + jnp.array([1.0, 0.0]), M + jnp.array([0.6, -0.9])]
  nll = [float(0.5 * jnp.sum((p - M) ** 2 / S2)) for p in pts]  # + a constant
  weighted = [_recon(p, "likelihood") for p in pts]
  unweighted = [_recon(p, "none") for p in pts]
  for i in (1, 2):
    want = nll[i] - nll[0]
    assert weighted[i] - weighted[0] == pytest.approx(want, abs=0.05 * want + 0.1)
    assert abs((unweighted[i] - unweighted[0]) - want) > 0.3 * want


def test_truncated_snr_weighted_objective_is_the_pixel_posterior_variance_where_noise_wins():
  """Data x0 ~ N(M, S2) with the exact score and c = 0: per dim, E 1/2 (eps_hat - n)^2 =
  1/2 alpha^2 s / (alpha^2 s + sigma^2), and (sigma / alpha)^2 times it is the pixel
  posterior variance 1/2 sigma^2 s / (alpha^2 s + sigma^2). The truncated-SNR
  objective must average the first where SNR > 1, the second where 1/SNR is below the
  cap, and cap times the first beyond (a weight the wrong way up, or none, misses)."""
  sde = sde_lib.make("vp")
  spec = fused_step.StepSpec(sde, 8, 1000.0)
  cap, n = 30.0, 200000
  x0 = M + jnp.sqrt(S2) * jax.random.normal(jax.random.key(1), (n, 2))
  encode = lambda x, t: (jnp.zeros((x.shape[0], 2)), jnp.zeros((x.shape[0], 2)))
  recon = {}
  for weighting in ("none", "truncated_snr"):
    _, aux = objective.vdae_loss(
      gaussian.exact_eps(sde, M, S2),
      encode,
      x0,
      jax.random.key(0),
      sde,
      spec,
      beta_kl=0.0,
      weighting=weighting,
      weight_cap=cap,
      time_sampling="stratified",
      kernel="reference",
    )
    recon[weighting] = float(aux["recon"])
  t = np.linspace(sde.eps, 1.0, 200001)
  a, s = (np.asarray(v, np.float64) for v in sde.marginal(jnp.asarray(t, jnp.float32)))
  per_t = np.sum(
    0.5 * a[:, None] ** 2 * np.asarray(S2) / (a[:, None] ** 2 * np.asarray(S2) + s[:, None] ** 2), 1
  )
  w = np.clip((s / a) ** 2, 1.0, cap)
  mean = lambda f: integrate.trapezoid(f, t) / (1.0 - sde.eps)
  assert recon["none"] == pytest.approx(mean(per_t), rel=0.02)
  assert recon["truncated_snr"] == pytest.approx(mean(w * per_t), rel=0.02)
  assert recon["truncated_snr"] > 1.3 * recon["none"]  # the weight is felt (1.42x here)
