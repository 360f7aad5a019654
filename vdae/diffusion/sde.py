"""Forward SDEs (VP, sub-VP, VE, cosine VP), one class each: their marginals, priors and
reverse-time forms.

Every SDE here has a Gaussian perturbation kernel
  x_t = alpha(t) x_0 + sigma(t) n,  n ~ N(0, I),
so one score network parameterisation (noise prediction, score = -eps / sigma)
serves them all. Shapes: `t` is [B]; `x` is [B, ...]; per-example scalars are
broadcast over the trailing axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from vdae import schema
from vdae.types import Array, ScoreFn


def bcast(v: Array, x: Array) -> Array:
  """Reshapes per-example `v` [B] to broadcast against `x` [B, ...]."""
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


@dataclasses.dataclass(frozen=True)
class SDE:
  """A linear SDE dx = f(t) x dt + g(t) dw on t in [eps, 1]; one subclass per `kind`
  (`SDES`), each giving log alpha(t), sigma(t), (f(t), g(t)^2) and the inverse of the noise
  level. `expm1` is a parameter of the formulas that use it: the Pallas kernel, whose
  Mosaic target has none, passes its own and so computes the same formulas."""

  kind: ClassVar[str]
  beta_min: float = 0.1
  beta_max: float = 20.0
  sigma_min: float = 0.01
  sigma_max: float = 50.0
  eps: float = 1e-3
  timesteps: int = 1000  # vp_cosine only
  has_drift: ClassVar[bool] = True  # f != 0 (the kernel drops the f x term otherwise)

  # --- coefficients (each subclass's) ----------------------------------------
  def log_alpha(self, t: Array) -> Array:
    raise NotImplementedError

  def sigma(self, t: Array, expm1=jnp.expm1) -> Array:
    raise NotImplementedError

  def sde_coefficients(self, t: Array, expm1=jnp.expm1) -> tuple[Array, Array]:
    """(f(t), g(t)^2): drift is f(t) * x, squared diffusion g(t)^2, each [B]."""
    raise NotImplementedError

  def time_of_noise_level(self, level: Array) -> Array:
    """The t at which sigma(t) / alpha(t) = level (EDM's noise level), elementwise."""
    raise NotImplementedError

  @property
  def prior_std(self) -> float:
    return 1.0

  # --- from the coefficients ---------------------------------------------------
  def beta(self, t: Array) -> Array:
    """beta(t) = beta_min + t (beta_max - beta_min) (VP / sub-VP)."""
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def marginal(self, t: Array) -> tuple[Array, Array]:
    """(alpha(t), sigma(t)) of the perturbation kernel, each [B]."""
    return jnp.exp(self.log_alpha(t)), self.sigma(t)

  def drift(self, x: Array, t: Array) -> Array:
    f, _ = self.sde_coefficients(t)
    return bcast(f, x) * x

  def diffusion(self, t: Array) -> Array:
    return jnp.sqrt(self.sde_coefficients(t)[1])

  # --- marginals and prior -------------------------------------------------
  def perturb(self, x0: Array, t: Array, noise: Array) -> Array:
    alpha, sigma = self.marginal(t)
    return bcast(alpha, x0) * x0 + bcast(sigma, x0) * noise

  def prior_sample(self, key: Array, shape: tuple[int, ...]) -> Array:
    return self.prior_std * jax.random.normal(key, shape)

  def prior_logp(self, z: Array) -> Array:
    """log N(z; 0, prior_std^2 I) summed over all but the batch axis: [B]."""
    d = math.prod(z.shape[1:])
    s2 = self.prior_std**2
    sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
    return -0.5 * d * math.log(2 * math.pi * s2) - 0.5 * sq / s2

  # --- reverse time --------------------------------------------------------
  def reverse_drift(self, score_fn: ScoreFn, x: Array, t: Array, ode: bool) -> Array:
    """Drift of the reverse SDE (ode=False) or the probability-flow ODE (ode=True).

    reverse SDE:  dx = [f x - g^2 s] dt + g dw_bar
    PF ODE:       dx = [f x - 1/2 g^2 s] dt
    """
    f, g2 = self.sde_coefficients(t)
    w = 0.5 if ode else 1.0
    return bcast(f, x) * x - bcast(w * g2, x) * score_fn(x, t)


@dataclasses.dataclass(frozen=True)
class VP(SDE):
  """DDPM-like: beta(t) linear, sigma^2 = 1 - alpha^2."""

  kind = "vp"

  def log_alpha(self, t):
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def sigma(self, t, expm1=jnp.expm1):
    return jnp.sqrt(-expm1(2.0 * self.log_alpha(t)))

  def sde_coefficients(self, t, expm1=jnp.expm1):
    b = self.beta(t)
    return -0.5 * b, b

  def _time_of_log_alpha(self, la):
    """log_alpha(t) = -d t^2 / 4 - beta_min t / 2 = la, solved for t >= 0."""
    d, b0 = self.beta_max - self.beta_min, self.beta_min
    if d == 0:
      return -2.0 * la / b0
    return (jnp.sqrt(0.25 * b0**2 - d * la) - 0.5 * b0) / (0.5 * d)

  def time_of_noise_level(self, level):
    return self._time_of_log_alpha(-0.5 * jnp.log1p(level**2))  # sigma^2 = 1 - alpha^2


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
  """Song et al. 2021's sub-VP: the VP's alpha, sigma = 1 - alpha^2."""

  kind = "subvp"

  def sigma(self, t, expm1=jnp.expm1):
    return -expm1(2.0 * self.log_alpha(t))

  def sde_coefficients(self, t, expm1=jnp.expm1):
    b = self.beta(t)
    return -0.5 * b, b * -expm1(4.0 * self.log_alpha(t))

  def time_of_noise_level(self, level):
    # sigma = 1 - alpha^2, so alpha^2 + level alpha - 1 = 0
    return self._time_of_log_alpha(jnp.log(0.5 * (jnp.sqrt(level**2 + 4.0) - level)))


@dataclasses.dataclass(frozen=True)
class VE(SDE):
  """SMLD-like: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

  kind = "ve"
  has_drift = False

  def log_alpha(self, t):
    return jnp.zeros_like(t)

  def sigma(self, t, expm1=jnp.expm1):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde_coefficients(self, t, expm1=jnp.expm1):
    sigma = self.sigma(t)
    return jnp.zeros_like(t), sigma**2 * 2.0 * math.log(self.sigma_max / self.sigma_min)

  def time_of_noise_level(self, level):
    return jnp.log(level / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

  @property
  def prior_std(self) -> float:
    return self.sigma_max


@dataclasses.dataclass(frozen=True)
class VPCosine(VP):
  """The VP SDE whose alpha_bar(t) is Nichol & Dhariwal's cosine schedule (diffusers'
  squaredcos_cap_v2) over `timesteps` discrete steps, placed so that it equals the
  discrete alphas_cumprod at every training timestep t_i = i / (N - 1): alpha_bar(t) =
  f(u) / f(0), f(u) = cos^2((u + s) / (1 + s) pi / 2), u = (t (N - 1) + 1) / N, and u held
  at the clipped last step's value (betas capped at 0.999) above it, so beta(t) stays
  finite."""

  kind = "vp_cosine"
  _COS_S: ClassVar[float] = 0.008

  def _cos_theta(self, u):
    return (u + self._COS_S) / (1 + self._COS_S) * (math.pi / 2)

  @property
  def _cos_u_max(self) -> float:
    """The u at which f(u) / f(0) is the discrete schedule's last, clipped alpha_bar."""
    n = self.timesteps
    f = lambda u: math.cos(self._cos_theta(u)) ** 2
    last = f((n - 1) / n) / f(0.0) * (1 - 0.999)  # beta_{N-1} = min(1 - 0 / f, 0.999)
    return (math.acos(math.sqrt(last * f(0.0))) * 2 / math.pi) * (1 + self._COS_S) - self._COS_S

  def _cos_u(self, t):
    n = self.timesteps
    return jnp.minimum((t * (n - 1) + 1) / n, self._cos_u_max)

  def log_alpha(self, t):
    return jnp.log(jnp.cos(self._cos_theta(self._cos_u(t))) / math.cos(self._cos_theta(0.0)))

  def sde_coefficients(self, t, expm1=jnp.expm1):
    # beta = -2 d log(alpha) / dt; 0 where u is held
    n = self.timesteps
    du = jnp.where((t * (n - 1) + 1) / n < self._cos_u_max, (n - 1) / n, 0.0)
    b = 2 * jnp.tan(self._cos_theta(self._cos_u(t))) * (math.pi / 2) / (1 + self._COS_S) * du
    return -0.5 * b, b

  def time_of_noise_level(self, level):
    # cos(theta) = alpha cos(theta_0), then u -> t
    alpha = 1.0 / jnp.sqrt(1.0 + level**2)
    theta = jnp.arccos(alpha * math.cos(self._cos_theta(0.0)))
    u = theta * 2 / math.pi * (1 + self._COS_S) - self._COS_S
    n = self.timesteps
    return jnp.clip((u * n - 1) / (n - 1), 0.0, 1.0)


SDES: dict[str, type[SDE]] = {c.kind: c for c in (VP, SubVP, VE, VPCosine)}


def make(kind: str, *args, **kwargs) -> SDE:
  """The SDE of `kind` (a key of SDES) with these parameters (SDE's fields)."""
  return SDES[schema.require("sde.kind", kind, tuple(SDES))](*args, **kwargs)


def log_snr(sde: SDE, t: Array) -> Array:
  """lambda(t) = log(alpha(t) / sigma(t)), decreasing in t (DPM-Solver's time variable)."""
  alpha, sigma = sde.marginal(t)
  return jnp.log(alpha) - jnp.log(sigma)


def from_config(cfg) -> SDE:
  """Builds the SDE from the `sde` config group."""
  return make(
    cfg.kind,
    beta_min=cfg.beta_min,
    beta_max=cfg.beta_max,
    sigma_min=cfg.sigma_min,
    sigma_max=cfg.sigma_max,
    eps=cfg.eps,
    timesteps=cfg.timesteps,
  )
