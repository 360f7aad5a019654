"""Denoising score matching (stage 1) and the diffusion time sampling it shares with stage 2.

t ~ U[eps, 1] (or stratified), x_0 perturbed with the SDE's Gaussian kernel,
the network regresses the true noise. Shapes: x0 [B, H, W, C]; losses are
summed over pixels and averaged over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdae import schema
from vdae.diffusion import sde as sde_lib
from vdae.types import Array, EpsFn

TIME_SAMPLING = ("uniform", "stratified")  # stage2.time_sampling


def sample_time(key: Array, batch: int, t_eps: float, method: str = "uniform") -> Array:
  """t [B] on [eps, 1]: i.i.d. uniform, or stratified (one per 1/B stratum, a
  low-discrepancy draw that lowers the loss's variance at equal cost)."""
  if schema.require("stage2.time_sampling", method, TIME_SAMPLING) == "uniform":
    u = jax.random.uniform(key, (batch,))
  else:
    u0 = jax.random.uniform(key, ())
    u = jnp.mod(u0 + jnp.arange(batch) / batch, 1.0)
  return t_eps + (1.0 - t_eps) * u


def likelihood_weight(sde: sde_lib.SDE, t: Array) -> Array:
  """lambda(t) = g(t)^2 / sigma(t)^2: the weight that turns the noise-prediction
  residual 1/2 ||eps - n||^2 into the ELBO's integrand (nats)."""
  _, g2 = sde.sde_coefficients(t)
  return g2 / sde.marginal(t)[1] ** 2


def truncated_snr_weight(sde: sde_lib.SDE, t: Array, cap: float) -> Array:
  """min(max(1, sigma^2 / alpha^2), cap): the weight on 1/2 ||eps - n||^2 that makes it
  the pixel-space residual 1/2 ||x0 - x0_hat||^2 wherever the noise outweighs the
  signal (Salimans and Ho's truncated-SNR weighting), and leaves it as it is where
  the signal wins. The cap keeps t near 1 (where a VP SDE's alpha is ~0.007 and the
  frozen score model's x0 estimate is poorest) from swamping the batch."""
  alpha, sigma = sde.marginal(t)
  return jnp.clip((sigma / alpha) ** 2, 1.0, cap)


_GRID = 2048  # cells of the importance-sampling table (log-spaced in t)


def importance_time(key: Array, batch: int, sde: sde_lib.SDE, method: str = "uniform"):
  """(t [B], w [B]) with t drawn from p(t) proportional to lambda(t) on [eps, 1] and
  w = lambda(t) / p(t), so E[w h(t)] = integral of lambda h dt for any h.

  lambda ~ 1 / t near 0 (VP), so uniform t would leave the integral's estimate
  dominated by rare small-t draws. p is piecewise constant on a log-spaced
  table (the weight uses that same p, so the estimate is exactly unbiased);
  u is uniform or stratified as in `sample_time`.
  """
  grid = jnp.geomspace(sde.eps, 1.0, _GRID + 1)
  lam = likelihood_weight(sde, grid)
  mass = 0.5 * (lam[1:] + lam[:-1]) * jnp.diff(grid)
  cdf = jnp.concatenate([jnp.zeros(1), jnp.cumsum(mass)])
  total = cdf[-1]
  u = sample_time(key, batch, 0.0, method) * total  # uniform or stratified on [0, 1]
  k = jnp.clip(jnp.searchsorted(cdf, u, side="right") - 1, 0, _GRID - 1)
  frac = (u - cdf[k]) / mass[k]
  width = grid[k + 1] - grid[k]
  t = grid[k] + jnp.clip(frac, 0.0, 1.0) * width
  density = mass[k] / width / total
  return t, likelihood_weight(sde, t) / density


def dsm_loss(
  eps_fn: EpsFn, x0: Array, key: Array, sde: sde_lib.SDE, likelihood_weighting: bool
) -> tuple[Array, dict[str, Array]]:
  """Denoising score matching in noise-prediction form.

  E_t,n || eps_theta(x_t, t) - n ||^2, optionally weighted by g(t)^2 / sigma(t)^2
  (the likelihood weighting: the score-space loss times g^2).
  """
  kt, kn = jax.random.split(key)
  t = sample_time(kt, x0.shape[0], sde.eps)
  n = jax.random.normal(kn, x0.shape, jnp.float32)
  xt = sde.perturb(x0, t, n)
  per_ex = jnp.sum(jnp.square(eps_fn(xt, t) - n), axis=tuple(range(1, x0.ndim)))
  if likelihood_weighting:
    _, g2 = sde.sde_coefficients(t)
    _, sigma = sde.marginal(t)
    per_ex = per_ex * g2 / sigma**2
  return jnp.mean(per_ex), {"dsm": jnp.mean(per_ex)}
