"""The fused time-embedding and score-sum step: its static spec and its `jax.numpy` reference.

Every decoding step and every stage-2 loss evaluation does the same
memory-bound elementwise work on [B, D] arrays. The functions below define it;
`pallas_fused_step.py` does it in one pass and `fused_step.py` picks one.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from vdae.diffusion import sde as sde_lib
from vdae.diffusion.score import eps_to_score
from vdae.models.embedding import sinusoidal
from vdae.types import Array


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Static description of the step: the SDE and the time-embedding layout."""

  sde: sde_lib.SDE
  temb_dim: int
  time_scale: float

  @classmethod
  def from_config(cls, model, sde) -> StepSpec:
    """The step of the score network built from the `model` and `sde` groups."""
    return cls(sde_lib.from_config(sde), model.temb_dim, sde.time_scale)


def reference_reverse_step(
  x: Array,
  eps: Array,
  c: Array | None,
  noise: Array | None,
  t: Array,
  dt: Array,
  spec: StepSpec,
) -> tuple[Array, Array]:
  """One reverse-time step from t to t - dt with the conditional score.

  Args:
    x: [B, D] current state x_t.
    eps: [B, D] score network's noise prediction eps_theta(x_t, t).
    c: [B, D] latent-correction score grad_x log q(z | x_t, t), or None (0).
    noise: [B, D] standard normal for Euler-Maruyama, or None for the
      probability-flow ODE (Euler) update.
    t: [B] current time.
    dt: scalar or [B] step size (> 0; time decreases).
    spec: SDE and embedding layout.

  Returns:
    x_next [B, D] and the sinusoidal embedding of t - dt, [B, temb_dim].

  Equivalent JAX:
    f, g2 = sde.sde_coefficients(t); _, sigma = sde.marginal(t)
    s = -eps / sigma + c
    x_next = x - (f x - w g2 s) dt + sqrt(g2 dt) noise   # w = 1 SDE, 1/2 ODE
  """
  dt = jnp.broadcast_to(jnp.asarray(dt, jnp.float32), t.shape)
  f, g2 = spec.sde.sde_coefficients(t)
  _, sigma = spec.sde.marginal(t)
  score = eps_to_score(eps, sigma)
  if c is not None:
    score = score + c
  w = 0.5 if noise is None else 1.0
  x_next = x - (f[:, None] * x - (w * g2)[:, None] * score) * dt[:, None]
  if noise is not None:
    x_next = x_next + jnp.sqrt(g2 * dt)[:, None] * noise
  temb_next = sinusoidal(t - dt, spec.temb_dim, spec.time_scale)
  return x_next.astype(x.dtype), temb_next


def reference_stage2_residual(
  eps: Array, c: Array, noise: Array, t: Array, spec: StepSpec
) -> Array:
  """Per-example 1/2 ||eps - sigma(t) c - noise||^2 over D: [B].

  eps, c, noise: [B, D]; t: [B]. Differentiable in eps and c.
  """
  _, sigma = spec.sde.marginal(t)
  r = eps - sigma[:, None] * c - noise
  return 0.5 * jnp.sum(r * r, axis=-1)
