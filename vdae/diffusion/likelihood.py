"""Likelihood of the score model through the probability-flow ODE, in bits per dim.

The PF ODE dx/dt = f(t) x - 1/2 g(t)^2 s(x, t) carries x_eps to x_1, and the
instantaneous change of variables gives
  log p_eps(x_eps) = log p_1(x_1) + int_eps^1 div_x [f x - 1/2 g^2 s](x_t, t) dt,
with p_1 the SDE's prior. The augmented state (x, int div) is integrated
forward with diffrax's adaptive Tsit5 / Dopri5 (Song et al. 2021 use RK45).

Divergence: exact when D is small, as the trace of the Jacobian from D
forward-mode products with one-hot directions (chunked, so a 32x32x1 image
never holds a D x D Jacobian per example). The score network has no
batch-coupled layers, so a one-hot tangent for the whole batch yields column i
of *every* example's Jacobian in one JVP. For large D: Hutchinson's estimator
with Rademacher probes drawn once per solve (FFJORD).

Discrete data (dequantisation). Pixels take L levels mapped to [-1, 1]:
x_k = 2 k / (L - 1) - 1, bin width Delta = 2 / (L - 1) (the data pipeline's
uint8 / 127.5 - 1 is L = 256; scikit-learn digits are 0..16, L = 17). With
uniform dequantisation x~ = x_k + Delta (u - 1/2), Jensen gives the bound
  -log2 P(k) / D <= -E[log p(x~)] / (D ln 2) + log2((L - 1) / 2),
i.e. bits per dim of the *discrete* data. The offset is log2(127.5) ~ 6.99
for 8-bit images (Song et al. round it to 7) and exactly 3 for digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from vdae import schema
from vdae.diffusion import sde as sde_lib
from vdae.types import Array, ScoreFn

# eval.bpd_solver's choices -> diffrax's solver classes, by name: diffrax (and equinox,
# lineax, optimistix under it) is imported where a likelihood is solved, since every
# process reads this module through the config and most never solve one.
SOLVERS = {"tsit5": "Tsit5", "dopri5": "Dopri5"}


def exact_divergence(f: Callable[[Array], Array], x: Array, chunk: int = 64) -> Array:
  """div f at x [B, D] -> [B], for f: [B, D] -> [B, D] acting on each row alone.

  D one-hot JVPs in chunks of `chunk` directions (vmapped), so the cost is D
  forward-mode passes of the batch and the memory `chunk` x the batch.
  """
  d = x.shape[1]
  chunk = min(chunk, d)
  n_chunks = -(-d // chunk)

  def body(c, acc):
    idx = c * chunk + jnp.arange(chunk)
    basis = jax.nn.one_hot(idx, d, dtype=x.dtype)  # [chunk, D]; rows past D are 0
    jv = jax.vmap(lambda v: jax.jvp(f, (x,), (jnp.broadcast_to(v, x.shape),))[1])(basis)
    return acc + jnp.einsum("kbd,kd->b", jv, basis)

  return jax.lax.fori_loop(0, n_chunks, body, jnp.zeros(x.shape[:1], x.dtype))


def hutchinson_divergence(f: Callable[[Array], Array], x: Array, probes: Array) -> Array:
  """Unbiased div f at x [B, D] from probes [P, B, D] (Rademacher): mean_p v^T J v."""
  jv = jax.vmap(lambda v: jax.jvp(f, (x,), (v,))[1])(probes)
  return jnp.mean(jnp.sum(jv * probes, axis=-1), axis=0)


def log_likelihood(
  score_fn: ScoreFn,
  x: Array,
  sde: sde_lib.SDE,
  key: Array,
  *,
  exact_max_dim: int = 1024,
  probes: int = 1,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  solver: str = "tsit5",
  max_steps: int = 4096,
) -> tuple[Array, dict[str, Array]]:
  """log p_eps(x) in nats for x [B, ...] (continuous density, no dequantisation).

  Returns (logp [B], stats) with stats: num_steps (accepted + rejected solver
  steps), exact (1 if the divergence was exact), ok (1 if the solve succeeded;
  logp is NaN where it did not). Jittable.
  """
  import diffrax

  schema.require("eval.bpd_solver", solver, tuple(SOLVERS))
  shape = x.shape
  b, d = shape[0], math.prod(shape[1:])
  exact = d <= exact_max_dim
  v = jax.random.rademacher(key, (probes, b, d), dtype=jnp.float32)

  def drift(t, xf):
    tb = jnp.full((b,), t, xf.dtype)
    return sde.reverse_drift(score_fn, xf.reshape(shape), tb, ode=True).reshape(b, d)

  def vector_field(t, y, args):
    xf, _ = y
    f = lambda z: drift(t, z)
    div = exact_divergence(f, xf) if exact else hutchinson_divergence(f, xf, v)
    return f(xf), div

  y0 = (x.reshape(b, d).astype(jnp.float32), jnp.zeros((b,), jnp.float32))
  sol = diffrax.diffeqsolve(
    diffrax.ODETerm(vector_field),
    getattr(diffrax, SOLVERS[solver])(),
    sde.eps,
    1.0,
    None,
    y0,
    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    max_steps=max_steps,
    throw=False,
    saveat=diffrax.SaveAt(t1=True),
  )
  x1, delta = sol.ys[0][-1], sol.ys[1][-1]
  ok = sol.result == diffrax.RESULTS.successful
  logp = sde.prior_logp(x1.reshape(shape)) + delta
  stats = {
    "num_steps": sol.stats["num_steps"],
    "exact": jnp.asarray(exact, jnp.float32),
    "ok": ok.astype(jnp.float32),
  }
  return jnp.where(ok, logp, jnp.nan), stats


def solver_options(ev) -> dict:
  """log_likelihood's solver keywords from the `eval` config group (one place for
  every caller: the score model's bits/dim and the VDAE's -ELBO)."""
  return dict(
    probes=ev.hutchinson_probes,
    rtol=ev.bpd_rtol,
    atol=ev.bpd_atol,
    solver=ev.bpd_solver,
    max_steps=ev.bpd_max_steps,
  )


def dequantize(x: Array, levels: int, key: Array) -> Array:
  """Uniform noise over each value's bin: x + Delta (u - 1/2), Delta = 2 / (levels - 1)."""
  delta = 2.0 / (levels - 1)
  return x + delta * (jax.random.uniform(key, x.shape) - 0.5)


def bits_per_dim(logp: Array, dim: int, levels: int | None) -> Array:
  """Per-example bits per dimension from log-density logp [B] (nats) of D=`dim` values.

  levels=None: the continuous density's -log2 p / D (no discretisation term).
  levels=L: adds -log2(Delta) = log2((L - 1) / 2), the bin volume, so that with
  dequantised inputs it bounds the discrete data's bits per dim from above.
  """
  bpd = -logp / (dim * math.log(2.0))
  if levels is not None:
    bpd = bpd + math.log2((levels - 1) / 2.0)
  return bpd
