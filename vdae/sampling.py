"""Reverse-time samplers: Euler-Maruyama, predictor-corrector, probability-flow ODE.

All are driven by a noise-prediction function eps(x, t, temb) and an optional
latent-correction score c(x, t) (stage 2: s = -eps / sigma + c). Each reverse
step goes through the fused time-embedding and score-sum step
(`vdae.kernels.fused_step.reverse_step`), which also returns the sinusoidal
embedding of the next time for the next network call.

Shapes: x [B, H, W, C]; the step works on the flattened [B, D] view.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdae import sde as sde_lib
from vdae.kernels import fused_step

Array = jax.Array
# eps_fn(x [B,H,W,C], t [B], temb [B, temb_dim] or None) -> eps [B,H,W,C]
EpsFn = Callable[[Array, Array, Array | None], Array]
# corr_fn(x [B,H,W,C], t [B]) -> c [B,H,W,C]
CorrFn = Callable[[Array, Array], Array]

METHODS = ("em", "pc", "ode")


def _flat(a: Array) -> Array:
  return a.reshape(a.shape[0], -1)


def langevin_corrector(
  x: Array, t: Array, score: Array, key: Array, snr: float, sde: sde_lib.SDE
) -> Array:
  """One Langevin MCMC step at fixed t with the step size set by the target SNR.

  (Song et al. 2021, Alg. 4; for VP the step is scaled by alpha(t)^2.)
  """
  noise = jax.random.normal(key, x.shape)
  g = jnp.linalg.norm(_flat(score), axis=-1).mean()
  nn = jnp.linalg.norm(_flat(noise), axis=-1).mean()
  step = 2.0 * (snr * nn / jnp.maximum(g, 1e-12)) ** 2
  if sde.kind != "ve":
    alpha, _ = sde.marginal(t)
    step = step * alpha**2
  step = sde_lib.bcast(jnp.broadcast_to(step, t.shape), x)
  return x + step * score + jnp.sqrt(2.0 * step) * noise


def sample(
  eps_fn: EpsFn,
  shape: tuple[int, ...],
  key: Array,
  sde: sde_lib.SDE,
  spec: fused_step.StepSpec,
  *,
  method: str = "pc",
  num_steps: int = 200,
  snr: float = 0.16,
  corrector_steps: int = 1,
  corr_fn: CorrFn | None = None,
  denoise: bool = True,
  x_init: Array | None = None,
  kernel: str = "auto",
) -> Array:
  """Draws x_eps from x_1 ~ prior (or `x_init`) by integrating from t=1 to t=eps.

  method: "em" Euler-Maruyama reverse SDE, "pc" EM predictor + Langevin
  corrector, "ode" probability-flow ODE (Euler; deterministic given x_init).
  denoise: final Tweedie step x0 = (x - sigma eps) / alpha at t = eps.
  """
  if method not in METHODS:
    raise ValueError(f"sampling.method must be one of {METHODS}; got {method!r}")
  b = shape[0]
  k_init, k_loop = jax.random.split(key)
  x = sde.prior_sample(k_init, shape) if x_init is None else x_init
  ts = jnp.linspace(1.0, sde.eps, num_steps + 1)
  dt = (1.0 - sde.eps) / num_steps
  corr = (lambda x, t: corr_fn(x, t)) if corr_fn is not None else (lambda x, t: None)

  def score(x, t, eps):
    _, sigma = sde.marginal(t)
    s = -eps / sde_lib.bcast(sigma, x)
    c = corr(x, t)
    return s if c is None else s + c

  def body(i, carry):
    x, temb, key = carry
    key, k_noise, k_corr = jax.random.split(key, 3)
    t = jnp.full((b,), ts[i])
    if method == "pc":
      for j in range(corrector_steps):
        eps_c = eps_fn(x, t, temb)
        x = langevin_corrector(x, t, score(x, t, eps_c), jax.random.fold_in(k_corr, j), snr, sde)
    eps = eps_fn(x, t, temb)
    c = corr(x, t)
    noise = None if method == "ode" else jax.random.normal(k_noise, x.shape)
    x_next, temb_next = fused_step.reverse_step(
      _flat(x),
      _flat(eps),
      None if c is None else _flat(c),
      None if noise is None else _flat(noise),
      t,
      dt,
      spec,
      kernel,
    )
    return x_next.reshape(x.shape), temb_next, key

  temb0 = None
  if spec.temb_dim:
    from vdae.models.embedding import sinusoidal

    temb0 = sinusoidal(jnp.full((b,), ts[0]), spec.temb_dim, spec.time_scale)
  x, _, _ = jax.lax.fori_loop(0, num_steps, body, (x, temb0, k_loop))
  return tweedie_denoise(eps_fn, x, sde, corr_fn) if denoise else x


def tweedie_denoise(eps_fn: EpsFn, x: Array, sde: sde_lib.SDE, corr_fn: CorrFn | None = None):
  """E[x0 | x_t] at t = eps: (x - sigma eps_c) / alpha, eps_c = eps - sigma c."""
  t = jnp.full((x.shape[0],), sde.eps)
  alpha, sigma = sde.marginal(t)
  eps = eps_fn(x, t, None)
  if corr_fn is not None:
    eps = eps - sde_lib.bcast(sigma, x) * corr_fn(x, t)
  return (x - sde_lib.bcast(sigma, x) * eps) / sde_lib.bcast(alpha, x)


def make_sampler(sampling_cfg, sde: sde_lib.SDE, spec: fused_step.StepSpec):
  """functools.partial of `sample` with the config's method and settings."""
  return functools.partial(
    sample,
    sde=sde,
    spec=spec,
    method=sampling_cfg.method,
    num_steps=sampling_cfg.num_steps,
    snr=sampling_cfg.snr,
    corrector_steps=sampling_cfg.corrector_steps,
    denoise=sampling_cfg.denoise,
    kernel=sampling_cfg.kernel,
  )
