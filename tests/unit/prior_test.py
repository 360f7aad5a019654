"""The learned latent prior: its normaliser, and a diffusion model over Gaussian codes
that recovers their mean and full covariance (the normaliser alone gets only the
per-dimension scale; the correlation has to be learned)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdae.diffusion import sde as sde_lib
from vdae.latent import prior as prior_lib

pytestmark = pytest.mark.timeout(300)

MEAN = np.array([2.0, -1.0, 0.5], np.float32)
# The codes' aggregate covariance: the posterior means' (COV_MU) plus the
# posterior variance (POST_VAR, the same for every image).
COV_MU = np.array([[1.0, 0.7, 0.0], [0.7, 1.0, -0.4], [0.0, -0.4, 0.5]], np.float32)
POST_VAR = 0.05


def test_normaliser_is_the_aggregate_posteriors_mean_and_std():
  rng = np.random.default_rng(0)
  mu = rng.normal(size=(20000, 3)) @ np.linalg.cholesky(COV_MU).T + MEAN
  norm = prior_lib.Normaliser.from_posteriors(mu, np.full_like(mu, np.log(POST_VAR)))
  np.testing.assert_allclose(norm.shift, MEAN, atol=0.03)
  np.testing.assert_allclose(norm.scale**2, np.diag(COV_MU) + POST_VAR, rtol=0.05)
  back = prior_lib.Normaliser.from_meta(norm.meta())
  np.testing.assert_array_equal(back.scale, norm.scale)


def test_prior_trained_on_gaussian_codes_recovers_their_mean_and_covariance(tiny_config):
  """The codes z ~ q(z | x) of 'images' x = posterior means (an identity encoder with
  log-variance log POST_VAR) are N(MEAN, COV_MU + POST_VAR I); the trained prior's
  samples match that mean and covariance, correlations included."""
  c = tiny_config
  c.encoder.latent_dim = 3
  c.prior.width, c.prior.depth = 64, 2
  # The reverse SDE (pc): the learned model's PF ODE (any solver: ode, heun,
  # dpmpp_2m agree) sends ~0.1% of draws 15-150 std out (BUILD.md).
  c.prior.sample_method, c.prior.sample_num_steps = "pc", 200
  rng = np.random.default_rng(1)
  images = (rng.normal(size=(50000, 3)) @ np.linalg.cholesky(COV_MU).T + MEAN).astype(np.float32)
  encode = lambda params, x: (x, jnp.full_like(x, np.log(POST_VAR)))
  norm = prior_lib.Normaliser.from_posteriors(images, np.full_like(images, np.log(POST_VAR)))
  model = prior_lib.model_from_config(c)
  loss_fn = prior_lib.prior_loss(model, encode, sde_lib.from_config(c.sde))
  params = prior_lib.init_params(model, jax.random.key(0))
  steps = 1500
  opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  frozen = (None, jnp.asarray(norm.shift), jnp.asarray(norm.scale))

  @jax.jit
  def step(params, opt_state, x, key):
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, {"image": x}, key, frozen)
    updates, opt_state = opt.update(g, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = opt.init(params)
  for i in range(steps):
    x = images[rng.integers(0, len(images), 512)]
    params, opt_state, _ = step(params, opt_state, x, jax.random.key(i))
  z = prior_lib.LearnedPrior(c, params, norm).sample(8000, jax.random.key(7))
  target = COV_MU + POST_VAR * np.eye(3)
  np.testing.assert_allclose(z.mean(0), MEAN, atol=0.06)
  cov = np.cov(z.T)
  assert np.linalg.norm(cov - target) / np.linalg.norm(target) < 0.1, cov
  corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
  assert abs(corr - target[0, 1] / np.sqrt(target[0, 0] * target[1, 1])) < 0.08, corr
