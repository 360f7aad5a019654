"""The VAE baseline's ELBO against a closed-form Gaussian log-likelihood and KL."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from vdae.autoencoders import vae as vae_lib
from vdae.data import sources

pytestmark = pytest.mark.timeout(60)


def test_neg_elbo_is_gaussian_nll_plus_beta_kl(tiny_config):
  c = tiny_config
  c.vae.learn_obs_var = False
  model = vae_lib.model_from_config(c, (8, 8, 1))
  params = model.init(jax.random.key(0), (8, 8, 1))
  x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 1), minval=-1, maxval=1)
  key = jax.random.key(2)
  total, parts = model.neg_elbo(params, x, key, beta_kl=0.3)
  mu, lv = model.encode(params, x)
  z = mu + jnp.exp(0.5 * lv) * jax.random.normal(key, mu.shape)  # the same draw
  mean = np.asarray(model.decode(params, z)).reshape(3, -1)
  var = math.exp(c.vae.obs_log_var)
  for i in range(3):
    ref = -scipy.stats.multivariate_normal(mean[i], var * np.eye(64)).logpdf(
      np.asarray(x[i]).reshape(-1)
    )
    assert float(parts["nll"][i]) == pytest.approx(ref, rel=1e-4)
    m, v = np.asarray(mu[i], np.float64), np.exp(np.asarray(lv[i], np.float64))
    kl = 0.5 * np.sum(m**2 + v - 1 - np.log(v))
    assert float(parts["kl"][i]) == pytest.approx(kl, rel=1e-4)
    assert float(total[i]) == pytest.approx(ref + 0.3 * kl, rel=1e-4)


def test_vae_autoencoder_rate_and_decode_protocols(tiny_config):
  model = vae_lib.model_from_config(tiny_config, (8, 8, 1))
  params = model.init(jax.random.key(0), (8, 8, 1))
  levels = sources.data_levels(tiny_config.data, tiny_config.eval)
  ae = vae_lib.VAE(tiny_config, params, (8, 8, 1), levels)
  x = np.asarray(jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=-1, maxval=1))
  mu, lv = ae.posterior(x)
  np.testing.assert_allclose(ae.rate(x), 0.5 * np.sum(mu**2 + np.exp(lv) - 1 - lv, -1), rtol=1e-5)
  z = ae.encode(x)
  mode = ae.decode(z, jax.random.key(0), "mode")
  np.testing.assert_array_equal(mode, ae.decode(z, jax.random.key(1), "mode"))
  # sample = mode + exp(obs_log_var / 2) n: the residual's spread is the learned sigma.
  draws = np.stack([ae.decode(z, jax.random.key(k), "sample") for k in range(50)])
  sigma = float(np.exp(0.5 * ae.model.log_var(params)))
  np.testing.assert_allclose(draws.mean(0), mode, atol=5 * sigma / np.sqrt(50))
  assert np.std(draws - mode) == pytest.approx(sigma, rel=0.05)
  bpd = ae.extra_metrics(x, 4, 0)["neg_elbo_bits_per_dim"]
  assert np.isfinite(bpd) and bpd > 0
