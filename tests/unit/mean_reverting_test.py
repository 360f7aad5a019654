"""The mean-reverting SDE against its closed forms, and its reverse process on Gaussian data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.support import gaussian
from vdae.diffusion import samplers
from vdae.diffusion.mean_reverting import MeanReverting
from vdae.kernels import fused_step

pytestmark = pytest.mark.timeout(120)

LINEAR = MeanReverting(lam=0.4, schedule="linear", theta_min=0.1, theta_max=6.0)


@pytest.mark.parametrize("mr", [LINEAR, MeanReverting(lam=0.2, schedule="cosine")])
def test_marginal_matches_the_closed_form_and_its_variance_ode(mr):
  t = jnp.linspace(0.01, 1.0, 50)
  if mr.schedule == "linear":  # theta_bar = theta_min t + (theta_max - theta_min) t^2 / 2
    tb = mr.theta_min * t + 0.5 * (mr.theta_max - mr.theta_min) * t**2
    np.testing.assert_allclose(mr.theta_bar(t), tb, rtol=1e-5)
  tb = mr.theta_bar(t)
  x0, mu = jnp.full((50, 3), 1.5), jnp.full((50, 3), -0.5)
  mean, std = mr.marginal(x0, mu, t)
  np.testing.assert_allclose(mean, mu + (x0 - mu) * jnp.exp(-tb)[:, None], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std**2, mr.lam**2 * -jnp.expm1(-2 * tb), rtol=1e-4, atol=1e-7)
  # Ornstein-Uhlenbeck moments: dm/dt = theta (mu - m), dV/dt = -2 theta V + sigma^2.
  m_of = lambda s: mr.marginal(jnp.array([1.5]), jnp.array([-0.5]), s[None])[0][0]
  v_of = lambda s: mr.marginal(jnp.zeros(1), jnp.zeros(1), s[None])[1][0] ** 2
  for s in np.linspace(0.05, 0.95, 7):
    s = jnp.float32(s)
    th = float(mr.theta(s[None])[0])
    dm = th * (-0.5 - float(m_of(s)))
    assert float(jax.grad(m_of)(s)) == pytest.approx(dm, rel=1e-3, abs=1e-5)
    dv = -2 * th * float(v_of(s)) + float(mr.sigma(s[None])[0]) ** 2
    assert float(jax.grad(v_of)(s)) == pytest.approx(dv, rel=1e-3, abs=1e-5)


def test_forward_simulation_reaches_the_marginal():
  """Euler-Maruyama of dx = theta (mu - x) dt + sigma dw from a fixed x(0)."""
  mr, n, steps = LINEAR, 20000, 1000
  x0, mu = 1.0, -0.5
  x, key, dt = jnp.full((n, 1), x0), jax.random.key(0), 1.0 / steps
  for i in range(steps):
    t = jnp.full((n,), i * dt)
    key, k = jax.random.split(key)
    x = x + mr.drift(x, jnp.full_like(x, mu), t) * dt
    x = x + mr.sigma(t)[:, None] * jnp.sqrt(dt) * jax.random.normal(k, x.shape)
  mean, std = mr.marginal(jnp.full((1, 1), x0), jnp.full((1, 1), mu), jnp.ones(1))
  assert float(x.mean()) == pytest.approx(float(mean[0, 0]), abs=0.01)
  assert float(x.std()) == pytest.approx(float(std[0]), rel=0.02)


@pytest.mark.parametrize("method,steps", [("em", 500), ("dpmpp_2m_sde", 50)])
def test_the_reverse_process_recovers_gaussian_data_from_the_mean_plus_noise(method, steps):
  """Data x ~ N(m, s^2), mean mu (a 'blurry' x_bar, not m): start at x(1) = mu + lam n
  and run the reverse SDE with the exact score. The result must be N(m, s^2)."""
  mr = LINEAR
  m, s2 = jnp.array([0.8, -0.3, 0.1]), jnp.array([0.04, 0.01, 0.09])
  mu = jnp.array([0.5, 0.0, 0.0])
  unit = mr.unit
  # u = (x - mu) / lam is Gaussian too: the exact noise predictor of its SDE.
  eps_fn = gaussian.exact_eps(unit, (m - mu) / mr.lam, s2 / mr.lam**2)
  spec = fused_step.StepSpec(unit, 8, 1000.0)
  u = samplers.sample(
    eps_fn,
    (6000, 3),
    jax.random.key(1),
    unit,
    spec,
    method=method,
    num_steps=steps,
    denoise=False,
    kernel="reference",
  )
  x = np.asarray(mr.from_unit(u, mu))
  np.testing.assert_allclose(x.mean(0), m, atol=0.01)
  np.testing.assert_allclose(x.var(0), s2, rtol=0.08)
  # The score of x is the score of u over lam (the Jacobian of the change of variable).
  score_u = gaussian.exact_score(unit, (m - mu) / mr.lam, s2 / mr.lam**2)
  t = jnp.full((4,), 0.3)
  xs = jnp.ones((4, 3))
  alpha, _ = unit.marginal(t)
  var_x = alpha[:, None] ** 2 * s2 + (mr.lam * unit.marginal(t)[1][:, None]) ** 2
  want = -(xs - (mu + alpha[:, None] * (m - mu))) / var_x
  got = mr.score_from_unit(score_u(mr.to_unit(xs, mu), t))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="schedule"):
    MeanReverting(schedule="sigmoid")
  with pytest.raises(ValueError, match="lam"):
    MeanReverting(lam=0.0)
