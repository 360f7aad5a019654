"""The learned latent prior: its normaliser, and a diffusion model over Gaussian codes
that recovers their mean and full covariance (the normaliser alone gets only the
per-dimension scale; the correlation has to be learned)."""

import functools

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


@pytest.mark.slow  # trains the prior to a quality threshold
def test_prior_trained_on_gaussian_codes_recovers_their_mean_and_covariance(tiny_config):
  """The codes z ~ q(z | x) of 'images' x = posterior means (an identity encoder with
  log-variance log POST_VAR) are N(MEAN, COV_MU + POST_VAR I); the trained prior's
  samples match that mean and covariance, correlations included."""
  c = tiny_config
  c.encoder.latent_dim = 3
  c.prior.width, c.prior.depth = 64, 2
  # The reverse SDE (pc): the learned model's PF ODE (any solver: ode, heun,
  # dpmpp_2m agree) sends ~0.1% of draws 15-150 std out (docs/design.md).
  c.prior.sample_method, c.prior.sample_num_steps = "pc", 200
  rng = np.random.default_rng(1)
  images = (rng.normal(size=(50000, 3)) @ np.linalg.cholesky(COV_MU).T + MEAN).astype(np.float32)
  encode = lambda params, x: (x, jnp.full_like(x, np.log(POST_VAR)))
  norm = prior_lib.Normaliser.from_posteriors(images, np.full_like(images, np.log(POST_VAR)))
  model = prior_lib.model_from_config(c.prior, c.encoder.latent_dim, c.sde.time_scale)
  loss_fn = prior_lib.prior_loss(model, encode, sde_lib.from_config(c.sde))
  params = prior_lib.init_params(model, jax.random.key(0))
  steps = 1500
  opt = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  frozen = (None, jnp.asarray(norm.shift), jnp.asarray(norm.scale))

  # 1500 steps: run-time-bound, so this one program compiles with the backend
  # optimisations tests/conftest.py turns off (11.4 s of steps against 4.4 s).
  @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 2})
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


def test_posterior_table_gives_the_codes_encoding_each_step_would(tiny_config):
  """The table path (posteriors computed once, looked up by source row and flip) gives
  the online path's loss for the same key, mirrored rows included; looking up the
  unmirrored posterior for a mirrored image does not."""
  c = tiny_config
  c.encoder.latent_dim = 3
  rng = np.random.default_rng(0)
  w_mu, w_lv = rng.normal(size=(2, 8, 3)).astype(np.float32)  # not mirror-symmetric
  encode = lambda params, x: (x.reshape(len(x), -1) @ w_mu, 0.3 * x.reshape(len(x), -1) @ w_lv)
  rows = np.array([5, 0, 9, 3])  # the split's images' source rows, in split order
  images = rng.normal(size=(4, 2, 4, 1)).astype(np.float32)
  mirror = lambda x: x[:, :, ::-1]
  table = prior_lib.PosteriorTable.from_rows(
    rows, [tuple(map(np.asarray, encode(None, x))) for x in (images, mirror(images))]
  )
  assert table.mu.shape == (2, 10, 3)
  assert table.mu.nbytes + table.log_var.nbytes == prior_lib.PosteriorTable.nbytes_for(10, 3, True)
  pos, flipped = np.array([2, 0, 2, 3]), np.array([False, True, True, False])
  x = images[pos]
  x[flipped] = mirror(x[flipped])
  batch = {"image": x, "index": rows[pos], "flipped": flipped}
  model = prior_lib.model_from_config(c.prior, c.encoder.latent_dim, c.sde.time_scale)
  sde = sde_lib.from_config(c.sde)
  params = prior_lib.init_params(model, jax.random.key(0))
  # A non-zero output layer, so the loss depends on the network and the codes both.
  params = jax.tree.map(lambda p: p + 0.1, params)
  shift, scale = np.full(3, 0.2, np.float32), np.full(3, 1.5, np.float32)
  key = jax.random.key(3)
  online, _ = prior_lib.prior_loss(model, encode, sde)(params, batch, key, (None, shift, scale))
  lookup = prior_lib.prior_loss_from_table(model, sde)
  got, _ = lookup(params, batch, key, (table.mu, table.log_var, shift, scale))
  np.testing.assert_allclose(got, online, rtol=1e-6)
  unflipped = dict(batch, flipped=np.zeros(4, bool))
  wrong, _ = lookup(params, unflipped, key, (table.mu, table.log_var, shift, scale))
  # 100x the equality's tolerance above: the flips change the codes, not float rounding.
  assert abs(float(wrong) - float(online)) > 1e-4 * abs(float(online))
