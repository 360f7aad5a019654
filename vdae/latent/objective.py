"""The VDAE objective (stage 2): the conditional score s_theta + c regresses the DSM target."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdae import schema
from vdae.diffusion import sde as sde_lib
from vdae.diffusion.losses import importance_time, sample_time, truncated_snr_weight
from vdae.diffusion.score import eps_to_score
from vdae.kernels import fused_step
from vdae.latent import correction
from vdae.types import Array, EncodeFn, EpsFn

# stage2.weighting: none (the official unweighted eps loss), likelihood, truncated_snr
WEIGHTINGS = ("none", "likelihood", "truncated_snr")
FORMS = ("eps", "score")  # stage2.loss: eps (official) or sigma(t)^2-weighted score space


def vdae_loss(
  eps_fn: EpsFn,
  encode_fn: EncodeFn,
  x0: Array,
  key: Array,
  sde: sde_lib.SDE,
  spec: fused_step.StepSpec,
  *,
  beta_kl: float,
  form: str = "eps",
  logvar_term: bool = True,
  time_sampling: str = "uniform",
  weighting: str = "none",
  weight_cap: float = 100.0,
  kernel: str = "auto",
  correction_impl: str = "reverse",
) -> tuple[Array, dict[str, Array]]:
  """Stage-2 objective: the conditional score s_theta + c regresses the DSM target.

  z = mu(x0, 0) + exp(log_var(x0, 0) / 2) u; c = grad_{x_t} log q(z | x_t, t);
  eps_c = stop_grad(eps_theta(x_t, t)) - sigma(t) c.
    form="eps":   1/2 || eps_c - n ||^2                        (official)
    form="score": 1/2 sigma^2 || (s_theta + c) - (-n / sigma) ||^2
  The two are equal in exact arithmetic (sigma^2 weighting turns one into the
  other); "score" evaluates the score-space residual, for parity with code that
  works in score space. Plus beta_kl KL(q(z | x0, 0) || N(0, I)).

  weighting="likelihood": the residual times lambda(t) = g^2 / sigma^2, t drawn
  with density proportional to lambda (losses.importance_time), so "recon" is
  an unbiased estimate of 1/2 int lambda E||eps_c - n||^2 dt: the conditional
  diffusion ELBO's reconstruction term, -log p(x0 | z) up to a constant that
  depends on neither network, in nats. With beta_kl = 1 the loss is then a
  negative ELBO in the VAE's units. "none": t uniform (or stratified), no weight.
  "truncated_snr": t as for "none", the residual times min(max(1, sigma^2/alpha^2),
  weight_cap) (losses.truncated_snr_weight): where noise outweighs signal the code
  is paid in pixels, as a VAE's reconstruction is, not in noise.
  """
  b = x0.shape[0]
  kt, kn, kz = jax.random.split(key, 3)
  weighting = schema.require("stage2.weighting", weighting, WEIGHTINGS)
  if weighting == "likelihood":
    t, w = importance_time(kt, b, sde, time_sampling)
  else:
    t, w = sample_time(kt, b, sde.eps, time_sampling), None
    if weighting == "truncated_snr":
      w = truncated_snr_weight(sde, t, weight_cap)
  n = jax.random.normal(kn, x0.shape, jnp.float32)
  xt = sde.perturb(x0, t, n)

  mu0, logvar0 = encode_fn(x0, jnp.zeros((b,), jnp.float32))
  z = mu0 + jnp.exp(0.5 * logvar0) * jax.random.normal(kz, mu0.shape)
  # "jacfwd" (one forward pass per pixel) exists only as the benchmark baseline.
  corr = (
    correction.correction_score
    if correction_impl == "reverse"
    else correction.correction_score_jacfwd
  )
  c = corr(encode_fn, xt, t, z, logvar_term)
  # The score network is frozen: no gradient flows into (or through) it.
  eps = jax.lax.stop_gradient(eps_fn(xt, t))

  flat = lambda a: a.reshape(b, -1)
  if schema.require("stage2.loss", form, FORMS) == "eps":
    per_ex = fused_step.stage2_residual(flat(eps), flat(c), flat(n), t, spec, kernel)
  else:
    _, sigma = sde.marginal(t)
    s = eps_to_score(flat(eps), sigma) + flat(c)
    r = s - eps_to_score(flat(n), sigma)  # the DSM target is -n / sigma
    per_ex = 0.5 * sigma**2 * jnp.sum(r * r, axis=-1)
  if w is not None:
    per_ex = per_ex * w
  kl = correction.kl_standard_normal(mu0, logvar0)
  loss = jnp.mean(per_ex) + beta_kl * jnp.mean(kl)
  return loss, {
    "recon": jnp.mean(per_ex),
    "kl": jnp.mean(kl),
    "c_norm": jnp.mean(jnp.linalg.norm(flat(c), axis=-1)),
  }
