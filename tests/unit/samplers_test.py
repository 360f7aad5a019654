"""Samplers driven by the exact Gaussian score reproduce the data distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import gaussian
from vdae.diffusion import samplers as sampling
from vdae.diffusion import sde as sde_lib
from vdae.kernels import fused_step

M = jnp.array([1.0, -0.5])
S2 = jnp.array([0.25, 0.04])
COV_OFFDIAG_TOL = 0.03


def _run(kind, method, n=4000, steps=400):
  sde = sde_lib.SDE(kind)
  spec = fused_step.StepSpec(sde, 8, 1000.0)
  eps_fn = gaussian.exact_eps(sde, M, S2)
  x = sampling.sample(
    eps_fn,
    (n, 2),
    jax.random.key(0),
    sde,
    spec,
    method=method,
    num_steps=steps,
    snr=0.16,
    denoise=False,
    kernel="reference",
  )
  return np.asarray(x)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
  "kind,method",
  [
    ("vp", "em"),
    ("vp", "pc"),
    ("vp", "ode"),
    ("subvp", "ode"),
    ("ve", "em"),
    ("ve", "ode"),
  ],
)
def test_sampler_recovers_gaussian_mean_and_covariance(kind, method):
  x = _run(kind, method)
  sde = sde_lib.SDE(kind)
  # At t = eps the exact marginal is N(alpha m, alpha^2 s^2 + sigma^2) ~ data.
  t = jnp.array([sde.eps])
  target_var = np.asarray(gaussian.var_t(sde, t, S2))[0]
  np.testing.assert_allclose(x.mean(0), np.asarray(M) * float(sde.marginal(t)[0][0]), atol=0.04)
  np.testing.assert_allclose(x.var(0), target_var, rtol=0.12)
  cov = np.cov(x.T)
  assert abs(cov[0, 1]) < COV_OFFDIAG_TOL


def test_wrong_score_sign_fails_to_recover():
  """Guards the test above: the same check with a sign error in eps must fail."""
  sde = sde_lib.SDE("vp")
  spec = fused_step.StepSpec(sde, 8, 1000.0)
  good = gaussian.exact_eps(sde, M, S2)
  x = sampling.sample(
    lambda x, t, e=None: -good(x, t),
    (2000, 2),
    jax.random.key(0),
    sde,
    spec,
    method="ode",
    num_steps=100,
    denoise=False,
    kernel="reference",
  )
  assert not np.allclose(np.asarray(x).mean(0), np.asarray(M), atol=0.1)


@pytest.mark.parametrize("kind", ["vp", "subvp"])
def test_probability_flow_ode_carries_data_to_prior(kind):
  """Integrating the PF ODE forward from data ends at the prior N(0, I)."""
  sde = sde_lib.SDE(kind)
  score = gaussian.exact_score(sde, M, S2)
  n, steps = 10000, 400
  x = M + jnp.sqrt(S2) * jax.random.normal(jax.random.key(2), (n, 2))
  ts = jnp.linspace(sde.eps, 1.0, steps + 1)

  def body(i, x):
    t = jnp.full((n,), ts[i])
    return x + sde.reverse_drift(score, x, t, ode=True) * (ts[i + 1] - ts[i])

  x = np.asarray(jax.lax.fori_loop(0, steps, body, x))
  target = np.asarray(gaussian.var_t(sde, jnp.array([1.0]), S2))[0]
  np.testing.assert_allclose(
    x.mean(0), np.asarray(M) * float(sde.marginal(jnp.array([1.0]))[0][0]), atol=0.04
  )
  np.testing.assert_allclose(x.var(0), target, rtol=0.08)
  if kind == "vp":
    np.testing.assert_allclose(x.var(0), 1.0, rtol=0.08)


def test_denoise_step_applies_tweedie():
  """The final denoise step maps x_eps to E[x0 | x_eps] (exact for Gaussians)."""
  sde = sde_lib.SDE("vp", eps=0.2)
  eps_fn = gaussian.exact_eps(sde, M, S2)
  xt = jnp.array([[1.0, 1.0], [0.0, -2.0], [3.0, 0.5]])
  x0 = sampling.tweedie_denoise(eps_fn, xt, sde)
  t = jnp.full((3,), sde.eps)
  alpha, _ = sde.marginal(t)
  v = gaussian.var_t(sde, t, S2)
  posterior_mean = M + alpha[:, None] * S2 / v * (xt - alpha[:, None] * M)
  np.testing.assert_allclose(x0, posterior_mean, rtol=1e-5)


@pytest.mark.parametrize("method", ["pc", "ode"])
def test_python_loop_equals_one_compiled_loop(method):
  """The per-step (CPU) and single-program (accelerator) samplers agree exactly,
  with the params passed as arguments and a latent-correction term present."""
  import ml_collections

  sde = sde_lib.SDE("vp")
  spec = fused_step.StepSpec(sde, 8, 1000.0)

  def make_fns(args):
    m, s2, shift = args
    return gaussian.exact_eps(sde, m, s2), lambda x, t: shift * jnp.ones_like(x)

  cfg = ml_collections.ConfigDict(
    dict(method=method, num_steps=20, snr=0.16, corrector_steps=1, kernel="reference", denoise=True)
  )
  out = {}
  for loop in ("python", "scan"):
    cfg.loop = loop
    fn = sampling.compile_sampler(make_fns, cfg, sde, spec, (64, 2))
    out[loop] = np.asarray(fn((M, S2, jnp.float32(0.3)), jax.random.key(5)))
  np.testing.assert_allclose(out["python"], out["scan"], rtol=1e-5, atol=1e-5)
  cfg.loop = "python"
  other = sampling.compile_sampler(make_fns, cfg, sde, spec, (64, 2))
  assert not np.allclose(
    np.asarray(other((M, S2, jnp.float32(0.0)), jax.random.key(5))), out["python"], atol=1e-3
  )  # the correction term is really applied
