"""The encoder's Gaussian q_phi(z | x_t, t), its latent-correction score, and its KL to N(0, I).

Bayes' rule for scores: grad log p(x_t | z) = s_theta(x_t, t) + grad_{x_t} log q(z | x_t, t).
The second term, `c`, is computed with ONE reverse-mode pass: each example's
log-density depends only on its own x_t (no batch-coupled layers in the
encoder), so the gradient of the batch sum is the per-example gradient.
`correction_score_jacfwd` is the public JAX port's way (one forward pass per
input pixel), kept only as the baseline for tests and the benchmark.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vdae.types import Array, EncodeFn


def log_q(z: Array, mu: Array, log_var: Array, logvar_term: bool = True) -> Array:
  """Diagonal Gaussian log-density log N(z; mu, exp(log_var)), summed over L: [B].

  Written as a plain formula (not multivariate_normal: its batched Cholesky
  solves cost more and were seen to deadlock on a 2-core CPU). Without
  `logvar_term` the log v term is dropped, as in the official code; it then is
  no longer a normalised density but its gradient in mu is unchanged.
  """
  quad = jnp.square(z - mu) * jnp.exp(-log_var)
  if logvar_term:
    quad = quad + log_var + math.log(2 * math.pi)
  return -0.5 * jnp.sum(quad, axis=-1)


def correction_score(
  encode_fn: EncodeFn, xt: Array, t: Array, z: Array, logvar_term: bool = True
) -> Array:
  """c = grad_{x_t} log q(z | x_t, t): [B, ...] like xt, by one reverse pass.

  Differentiable in the encoder's parameters (second order through c).
  """

  def total(x):
    mu, log_var = encode_fn(x, t)
    return jnp.sum(log_q(z, mu, log_var, logvar_term))

  return jax.grad(total)(xt)


def correction_score_jacfwd(
  encode_fn: EncodeFn, xt: Array, t: Array, z: Array, logvar_term: bool = True
) -> Array:
  """Baseline: per-example forward-mode Jacobian over every pixel (D passes)."""

  def one(x, ti, zi):
    mu, log_var = encode_fn(x[None], ti[None])
    return log_q(zi[None], mu, log_var, logvar_term)[0]

  return jax.vmap(jax.jacfwd(one))(xt, t, z)


def kl_standard_normal(mu: Array, log_var: Array) -> Array:
  """KL(N(mu, exp(log_var)) || N(0, I)) per example: [B]."""
  return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(log_var) - 1.0 - log_var, axis=-1)
