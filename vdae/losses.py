"""Training objectives: stage-1 denoising score matching, stage-2 VDAE loss.

Both sample t ~ U[eps, 1] (or stratified), perturb x_0 with the SDE's Gaussian
kernel, and regress the true noise. Shapes: x0 [B, H, W, C]; losses are summed
over pixels and averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdae import latent
from vdae import sde as sde_lib
from vdae.kernels import fused_step

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]  # (x_t [B,H,W,C], t [B]) -> eps [B,H,W,C]


def sample_time(key: Array, batch: int, t_eps: float, method: str = "uniform") -> Array:
  """t [B] on [eps, 1]: i.i.d. uniform, or stratified (one per 1/B stratum, a
  low-discrepancy draw that lowers the loss's variance at equal cost)."""
  if method == "uniform":
    u = jax.random.uniform(key, (batch,))
  elif method == "stratified":
    u0 = jax.random.uniform(key, ())
    u = jnp.mod(u0 + jnp.arange(batch) / batch, 1.0)
  else:
    raise ValueError(f"time sampling must be uniform or stratified; got {method!r}")
  return t_eps + (1.0 - t_eps) * u


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


def vdae_loss(
  eps_fn: EpsFn,
  encode_fn: latent.EncodeFn,
  x0: Array,
  key: Array,
  sde: sde_lib.SDE,
  spec: fused_step.StepSpec,
  *,
  beta_kl: float,
  form: str = "eps",
  logvar_term: bool = True,
  time_sampling: str = "uniform",
  kernel: str = "auto",
  correction: str = "reverse",
) -> tuple[Array, dict[str, Array]]:
  """Stage-2 objective: the conditional score s_theta + c regresses the DSM target.

  z = mu(x0, 0) + exp(log_var(x0, 0) / 2) u; c = grad_{x_t} log q(z | x_t, t);
  eps_c = stop_grad(eps_theta(x_t, t)) - sigma(t) c.
    form="eps":   1/2 || eps_c - n ||^2                        (official)
    form="score": 1/2 sigma^2 || (s_theta + c) - (-n / sigma) ||^2
  The two are equal in exact arithmetic (sigma^2 weighting turns one into the
  other); "score" evaluates the score-space residual, for parity with code that
  works in score space. Plus beta_kl KL(q(z | x0, 0) || N(0, I)).
  """
  b = x0.shape[0]
  kt, kn, kz = jax.random.split(key, 3)
  t = sample_time(kt, b, sde.eps, time_sampling)
  n = jax.random.normal(kn, x0.shape, jnp.float32)
  xt = sde.perturb(x0, t, n)

  mu0, logvar0 = encode_fn(x0, jnp.zeros((b,), jnp.float32))
  z = mu0 + jnp.exp(0.5 * logvar0) * jax.random.normal(kz, mu0.shape)
  # "jacfwd" (one forward pass per pixel) exists only as the benchmark baseline.
  corr = latent.correction_score if correction == "reverse" else latent.correction_score_jacfwd
  c = corr(encode_fn, xt, t, z, logvar_term)
  # The score network is frozen: no gradient flows into (or through) it.
  eps = jax.lax.stop_gradient(eps_fn(xt, t))

  flat = lambda a: a.reshape(b, -1)
  if form == "eps":
    per_ex = fused_step.stage2_residual(flat(eps), flat(c), flat(n), t, spec, kernel)
  elif form == "score":
    _, sigma = sde.marginal(t)
    s = -flat(eps) / sigma[:, None] + flat(c)
    r = s + flat(n) / sigma[:, None]
    per_ex = 0.5 * sigma**2 * jnp.sum(r * r, axis=-1)
  else:
    raise ValueError(f"stage2.loss must be eps or score; got {form!r}")
  kl = latent.kl_standard_normal(mu0, logvar0)
  loss = jnp.mean(per_ex) + beta_kl * jnp.mean(kl)
  return loss, {
    "recon": jnp.mean(per_ex),
    "kl": jnp.mean(kl),
    "c_norm": jnp.mean(jnp.linalg.norm(flat(c), axis=-1)),
  }
