"""The mean-reverting SDE of IR-SDE (Luo et al., ICML 2023, arXiv 2301.11699).

  dx = theta(t) (mu - x) dt + sigma(t) dw,   sigma(t)^2 / theta(t) = 2 lam^2 fixed,

reverts towards a mean `mu`; for the refiner (autoencoders/refined_vae.py) mu
is the VAE's output x_bar, so the process runs from the sharp image x(0) = x to
x(1) ~ x_bar + lam * noise. From a clean x(0) the marginal is Gaussian:

  x(t) = mu + (x(0) - mu) e^{-theta_bar(t)} + lam sqrt(1 - e^{-2 theta_bar(t)}) n,
  theta_bar(t) = int_0^t theta(s) ds.

In u = (x - mu) / lam this is du = -theta u dt + sqrt(2 theta) dw: exactly the VP
SDE with beta(t) = 2 theta(t), alpha(t) = e^{-theta_bar(t)}, prior N(0, I). So
`unit` is a vdae SDE and every sampler, the fused step and DPM-Solver++ run on u
unchanged, with a noise predictor conditioned on mu; only the change of variable
lives here. theta's schedule: "linear" (theta_min + t (theta_max - theta_min): VP's
linear beta) or "cosine" (Nichol & Dhariwal's cosine alpha_bar: vp_cosine).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vdae.diffusion import sde as sde_lib
from vdae.types import Array, ScoreFn

SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class MeanReverting:
  lam: float = 0.3  # the stationary std around mu
  schedule: str = "linear"
  theta_min: float = 0.05  # linear schedule: theta(t) = theta_min + t (theta_max - theta_min)
  theta_max: float = 10.0
  eps: float = 1e-3
  timesteps: int = 1000  # cosine schedule: its discrete steps (as vp_cosine)

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if self.lam <= 0:
      raise ValueError(f"lam={self.lam} must be positive")

  @property
  def unit(self) -> sde_lib.SDE:
    """The SDE of u = (x - mu) / lam: VP with beta = 2 theta."""
    if self.schedule == "cosine":
      return sde_lib.VPCosine(eps=self.eps, timesteps=self.timesteps)
    return sde_lib.VP(beta_min=2 * self.theta_min, beta_max=2 * self.theta_max, eps=self.eps)

  # --- coefficients in x ------------------------------------------------------
  def theta(self, t: Array) -> Array:
    return 0.5 * self.unit.sde_coefficients(t)[1]

  def theta_bar(self, t: Array) -> Array:
    return -self.unit.log_alpha(t)

  def sigma(self, t: Array) -> Array:
    """The diffusion coefficient sigma(t) = lam sqrt(2 theta(t))."""
    return self.lam * jnp.sqrt(2.0 * self.theta(t))

  def marginal(self, x0: Array, mu: Array, t: Array) -> tuple[Array, Array]:
    """(mean [B, ...], std [B]) of x(t) given x(0) = x0 and the mean mu."""
    alpha, sigma_u = self.unit.marginal(t)
    return mu + sde_lib.bcast(alpha, x0) * (x0 - mu), self.lam * sigma_u

  def perturb(self, x0: Array, mu: Array, t: Array, noise: Array) -> Array:
    mean, std = self.marginal(x0, mu, t)
    return mean + sde_lib.bcast(std, x0) * noise

  def drift(self, x: Array, mu: Array, t: Array) -> Array:
    return sde_lib.bcast(self.theta(t), x) * (mu - x)

  def reverse_drift(self, score_fn: ScoreFn, x: Array, mu: Array, t: Array, ode: bool) -> Array:
    """Drift of the reverse SDE (ode=False) or PF ODE of x: f - w sigma^2 grad log p_t."""
    w = 0.5 if ode else 1.0
    return self.drift(x, mu, t) - sde_lib.bcast(w * self.sigma(t) ** 2, x) * score_fn(x, t)

  # --- the change of variable -------------------------------------------------
  def to_unit(self, x: Array, mu: Array) -> Array:
    return (x - mu) / self.lam

  def from_unit(self, u: Array, mu: Array) -> Array:
    return mu + self.lam * u

  def score_from_unit(self, score_u: Array) -> Array:
    """grad_x log p_t(x) from grad_u log p_t(u): the Jacobian of u(x) is 1 / lam."""
    return score_u / self.lam


def from_config(cfg) -> MeanReverting:
  """From the `refiner` config group."""
  return MeanReverting(
    lam=cfg.lam,
    schedule=cfg.schedule,
    theta_min=cfg.theta_min,
    theta_max=cfg.theta_max,
    eps=cfg.eps,
  )
