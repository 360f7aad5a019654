"""Closed forms for Gaussian data x0 ~ N(m, diag(s^2)) under a linear SDE.

p_t(x) = N(alpha m, alpha^2 s^2 + sigma^2): the exact score, noise predictor
and log-density, used as gold references by the tests.
"""

import jax.numpy as jnp

from vdae.diffusion import sde as sde_lib


def var_t(sde: sde_lib.SDE, t, s2):
  alpha, sigma = sde.marginal(t)
  return alpha[:, None] ** 2 * s2 + sigma[:, None] ** 2


def exact_score(sde, m, s2):
  """score(x [B, D], t [B]) = -(x - alpha m) / var_t."""

  def score(x, t):
    alpha, _ = sde.marginal(t)
    return -(x - alpha[:, None] * m) / var_t(sde, t, s2)

  return score


def exact_eps(sde, m, s2):
  """eps(x, t, temb=None) = -sigma * score: what a perfect network predicts."""
  score = exact_score(sde, m, s2)

  def eps(x, t, temb=None):
    del temb
    _, sigma = sde.marginal(t)
    return -sigma.reshape((-1,) + (1,) * (x.ndim - 1)) * score(
      x.reshape(x.shape[0], -1), t
    ).reshape(x.shape)

  return eps


def logp_t(sde, m, s2, x, t):
  v = var_t(sde, t, s2)
  alpha, _ = sde.marginal(t)
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi * v) + (x - alpha[:, None] * m) ** 2 / v, axis=-1)
