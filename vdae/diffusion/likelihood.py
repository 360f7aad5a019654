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

Bounded solves. `Pieces` advances the solve `piece_steps` solver steps per compiled call
(diffrax's diffeqsolve resumed with its solver and controller states), so the caller gets
control back between pieces however stiff the ODE (a SIGTERM, a progress line), and stops
it at `max_steps`: the value is then NaN, never a silently truncated integral.

Discrete data (dequantisation). Pixels take L levels mapped to [-1, 1]:
x_k = 2 k / (L - 1) - 1, bin width Delta = 2 / (L - 1) (the data pipeline's
uint8 / 127.5 - 1 is L = 256; scikit-learn digits are 0..16, L = 17). With
uniform dequantisation x~ = x_k + Delta (u - 1/2), Jensen gives the bound
  -log2 P(k) / D <= -E[log p(x~)] / (D ln 2) + log2((L - 1) / 2),
i.e. bits per dim of the *discrete* data. The offset is log2(127.5) ~ 6.99
for 8-bit images (Song et al. round it to 7) and exactly 3 for digits.
"""

from __future__ import annotations

import functools
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


def _problem(score_fn: ScoreFn, shape, sde: sde_lib.SDE, exact: bool, rtol, atol, solver):
  """(term, solver, controller) of the augmented PF ODE (x, int div) for x of `shape`;
  the Hutchinson probes are the term's args."""
  import diffrax

  schema.require("eval.bpd_solver", solver, tuple(SOLVERS))
  b, d = shape[0], math.prod(shape[1:])

  def drift(t, xf):
    tb = jnp.full((b,), t, xf.dtype)
    return sde.reverse_drift(score_fn, xf.reshape(shape), tb, ode=True).reshape(b, d)

  def vector_field(t, y, probes):
    xf, _ = y
    f = lambda z: drift(t, z)
    div = exact_divergence(f, xf) if exact else hutchinson_divergence(f, xf, probes)
    return f(xf), div

  return (
    diffrax.ODETerm(vector_field),
    getattr(diffrax, SOLVERS[solver])(),
    _remembering()(diffrax.PIDController(rtol=rtol, atol=atol)),
  )


@functools.cache
def _remembering():
  """A step-size controller class that wraps another and keeps, in its state, the size
  it proposes for the next step: diffeqsolve returns the controller's state but not that
  size, and a solve resumed from its state with it continues exactly as one solve would
  (diffrax's documented extension point: AbstractStepSizeController)."""
  import diffrax

  class RememberNextStep(diffrax.AbstractStepSizeController):
    inner: diffrax.AbstractStepSizeController

    def wrap(self, direction):
      return RememberNextStep(self.inner.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
      tnext, state = self.inner.init(terms, t0, t1, y0, dt0, args, func, error_order)
      return tnext, (state, tnext - t0)

    def adapt_step_size(self, t0, t1, y0, y1, args, y_error, error_order, controller_state):
      keep, t0_next, t1_next, jump, state, result = self.inner.adapt_step_size(
        t0, t1, y0, y1, args, y_error, error_order, controller_state[0]
      )
      return keep, t0_next, t1_next, jump, (state, t1_next - t0_next), result

  return RememberNextStep


# The first step's size. diffeqsolve (diffrax 0.7) takes 0.01 when not given one: its
# initial-step heuristic is skipped for the wrapped term it integrates. Given explicitly,
# every piece and every diffrax release starts the same.
FIRST_STEP = 0.01

# A solve's state['status'].
RUNNING, DONE, FAILED = 0, 1, 2


def start(
  score_fn, x, sde, key, *, exact_max_dim=1024, probes=1, rtol=1e-5, atol=1e-5, solver="tsit5"
) -> dict:
  """The state of a PF-ODE likelihood solve of x [B, ...] at t = eps, before any step:
  a pytree that `advance` carries to t = 1 (jittable)."""
  shape = x.shape
  b, d = shape[0], math.prod(shape[1:])
  exact = d <= exact_max_dim
  term, slv, ctrl = _problem(score_fn, shape, sde, exact, rtol, atol, solver)
  v = jax.random.rademacher(key, (probes, b, d), dtype=jnp.float32)
  y0 = (x.reshape(b, d).astype(jnp.float32), jnp.zeros((b,), jnp.float32))
  t0 = jnp.asarray(sde.eps, jnp.float32)
  tnext, ctrl_state = ctrl.init(term, t0, 1.0, y0, FIRST_STEP, v, slv.func, slv.error_order(term))
  return {
    "t": t0,
    "dt": jnp.asarray(tnext - t0, jnp.float32),
    "y": y0,
    "probes": v,
    "solver_state": slv.init(term, t0, tnext, y0, v),
    "controller_state": ctrl_state,
    "made_jump": jnp.asarray(False),
    "steps": jnp.asarray(0, jnp.int32),
    "status": jnp.asarray(RUNNING, jnp.int32),
  }


def advance(
  score_fn,
  state: dict,
  sde,
  steps: int,
  shape,
  *,
  exact_max_dim=1024,
  rtol=1e-5,
  atol=1e-5,
  solver="tsit5",
  **_,
) -> dict:
  """`state` of a solve of x [`shape`] carried at most `steps` solver steps (accepted +
  rejected) towards t = 1 (jittable). The solver's and the controller's states and the
  controller's proposed next step are carried over, so a solve advanced in pieces takes
  the steps one solve would."""
  import diffrax

  exact = math.prod(shape[1:]) <= exact_max_dim
  term, slv, ctrl = _problem(score_fn, shape, sde, exact, rtol, atol, solver)
  sol = diffrax.diffeqsolve(
    term,
    slv,
    state["t"],
    1.0,
    state["dt"],
    state["y"],
    args=state["probes"],
    stepsize_controller=ctrl,
    max_steps=steps,
    throw=False,
    saveat=diffrax.SaveAt(t1=True, solver_state=True, controller_state=True, made_jump=True),
    solver_state=state["solver_state"],
    controller_state=state["controller_state"],
    made_jump=state["made_jump"],
  )
  status = jnp.where(
    sol.result == diffrax.RESULTS.successful,
    DONE,
    jnp.where(sol.result == diffrax.RESULTS.max_steps_reached, RUNNING, FAILED),
  )
  return {
    **state,
    "t": sol.ts[-1].astype(jnp.float32),
    "dt": sol.controller_state[1].astype(jnp.float32),  # the controller's next proposal
    "y": jax.tree.map(lambda a: a[-1], sol.ys),
    "solver_state": sol.solver_state,
    "controller_state": sol.controller_state,
    "made_jump": jnp.asarray(sol.made_jump),
    "steps": state["steps"] + sol.stats["num_steps"].astype(jnp.int32),
    "status": status.astype(jnp.int32),
  }


def finish(state: dict, sde, shape) -> tuple[Array, dict[str, Array]]:
  """(logp [B] in nats, NaN where the solve did not reach t = 1; stats) of a state."""
  x1, delta = state["y"]
  ok = state["status"] == DONE
  logp = sde.prior_logp(x1.reshape(shape)) + delta
  return jnp.where(ok, logp, jnp.nan), {"num_steps": state["steps"], "ok": ok.astype(jnp.float32)}


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
  **_,
) -> tuple[Array, dict[str, Array]]:
  """log p_eps(x) in nats for x [B, ...] (continuous density, no dequantisation), in one
  call (jittable; `Pieces` runs the same solve in bounded pieces).

  Returns (logp [B], stats) with stats: num_steps (accepted + rejected solver
  steps), exact (1 if the divergence was exact), ok (1 if the solve reached t = 1
  within max_steps; logp is NaN where it did not).
  """
  kw = dict(exact_max_dim=exact_max_dim, rtol=rtol, atol=atol, solver=solver)
  state = start(score_fn, x, sde, key, probes=probes, **kw)
  state = advance(score_fn, state, sde, max_steps, x.shape, **kw)
  logp, stats = finish(state, sde, x.shape)
  stats["exact"] = jnp.asarray(math.prod(x.shape[1:]) <= exact_max_dim, jnp.float32)
  return logp, stats


def _on_mesh_of(args, x):
  """x on the mesh of `args`' first mesh-sharded leaf (split over its batch axes), if x
  is on none: a piece's output state is typed by the parameters' mesh, so a start state
  without it would make the second piece compile the whole solve again."""
  from jax.sharding import NamedSharding

  from vdae.parallel import sharding

  if isinstance(getattr(x, "sharding", None), NamedSharding):
    return x
  for leaf in jax.tree.leaves(args):
    if isinstance(getattr(leaf, "sharding", None), NamedSharding):
      return sharding.batch_from_host(sharding.to_host(x), leaf.sharding.mesh)
  return x


class Pieces:
  """The PF-ODE likelihood solved in pieces of at most `piece_steps` solver steps, each
  one compiled call, so that the caller gets control back between pieces (a SIGTERM
  handler, a progress line) however stiff the ODE: `self(args, x, key, between)`.

  make_score_fn(args) -> score_fn builds the score from the pytree `args` (parameters,
  codes), passed to every piece, never closed over. `between(state_on_host)` runs after
  each piece with t, steps and status read back. The whole solve stops at max_steps
  (status RUNNING then: not converged) or at a solver failure (FAILED).
  """

  def __init__(
    self,
    make_score_fn,
    sde,
    *,
    exact_max_dim=1024,
    probes=1,
    rtol=1e-5,
    atol=1e-5,
    solver="tsit5",
    max_steps=4096,
    piece_steps=32,
  ):
    kw = dict(exact_max_dim=exact_max_dim, rtol=rtol, atol=atol, solver=solver)
    self.max_steps, self.piece_steps = int(max_steps), int(piece_steps)
    self.sde = sde
    self._start = jax.jit(
      lambda args, x, key: start(make_score_fn(args), x, sde, key, probes=probes, **kw)
    )
    self._advance = jax.jit(
      lambda args, state, n, shape: advance(make_score_fn(args), state, sde, n, shape, **kw),
      static_argnums=(2, 3),
      donate_argnums=1,
    )

  def __call__(self, args, x, key, between=None) -> tuple[Array, dict]:
    """(logp [B], stats {num_steps, ok}) of x [B, ...]."""
    state = self._start(args, _on_mesh_of(args, x), key)
    shape = tuple(x.shape)
    steps, status = 0, RUNNING
    # Every piece has the same size (one compiled program): the budget is checked
    # between pieces, so a solve may take up to piece_steps - 1 steps past max_steps.
    while status == RUNNING and steps < self.max_steps:
      state = self._advance(args, state, self.piece_steps, shape)
      t, steps, status = (jax.device_get(state[k]) for k in ("t", "steps", "status"))
      steps, status = int(steps), int(status)
      if between is not None:
        between({"t": float(t), "steps": steps, "status": status})
    return finish(state, self.sde, x.shape)


def solver_options(ev) -> dict:
  """log_likelihood's solver keywords from the `eval` config group (one place for
  every caller: the score model's bits/dim and the VDAE's -ELBO)."""
  return dict(
    probes=ev.hutchinson_probes,
    rtol=ev.bpd_rtol,
    atol=ev.bpd_atol,
    solver=ev.bpd_solver,
    max_steps=ev.bpd_max_steps,
    piece_steps=ev.bpd_piece_steps,
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


class BatchHooks:
  """What a caller of `solve_batches` does around each batch: `load(i)` a result kept
  from an earlier run (None: solve it), `save(i, result)`, and `between(i, progress)`
  after each piece of a solve. These do nothing (a library caller)."""

  def load(self, i: int) -> dict | None:
    return None

  def save(self, i: int, result: dict) -> None:
    pass

  def between(self, i: int, progress: dict) -> None:
    pass


def solve_batches(solve, x, batch: int, pad: bool, hooks: BatchHooks | None = None) -> dict:
  """solve(xb, i, between) -> (bpd [b], stats) over x [N, ...] in batches of `batch`
  (the last one padded to `batch` if pad, else smaller); returns {bpd [N], ok [N],
  steps [number of batches]} as numpy."""
  import numpy as np

  from vdae.data import pipeline  # (grain: imported where batches are solved)
  from vdae.parallel.sharding import to_host

  hooks = hooks or BatchHooks()
  bpd, ok, steps = [], [], []
  for i, lo in enumerate(range(0, len(x), batch)):
    part = hooks.load(i)
    if part is None:
      xb = np.asarray(x[lo : lo + batch])
      k = len(xb)
      if pad:
        xb = pipeline.pad_batch({"x": xb}, batch)["x"]
      vals, stats = solve(xb, i, lambda p, i=i: hooks.between(i, p))
      part = {
        "bpd": to_host(vals)[:k].tolist(),
        "ok": bool(float(to_host(stats["ok"])) == 1.0),
        "steps": int(to_host(stats["num_steps"])),
      }
      hooks.save(i, part)
    bpd.append(np.asarray(part["bpd"], np.float64))
    ok.append(np.full(len(part["bpd"]), part["ok"]))
    steps.append(part["steps"])
  return {"bpd": np.concatenate(bpd), "ok": np.concatenate(ok), "steps": np.asarray(steps)}


def summary(key: str, out: dict, steps_key: str) -> dict[str, float]:
  """{key: mean bits/dim, NaN unless every solve converged; key_converged: the share of
  images whose solve reached t = 1; steps_key: mean solver steps per batch} of
  `solve_batches`' output. A mean over the converged images alone would favour the
  easy ones, so a budget too small shows as NaN, never as a smaller number."""
  import numpy as np

  ok = out["ok"] & np.isfinite(out["bpd"])
  return {
    key: float(np.mean(out["bpd"])) if ok.all() else float("nan"),
    f"{key}_converged": float(np.mean(ok)),
    steps_key: float(np.mean(out["steps"])),
  }
