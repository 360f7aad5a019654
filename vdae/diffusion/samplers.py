"""Reverse-time samplers: Euler-Maruyama, predictor-corrector, probability-flow ODE, Heun,
DPM-Solver++(2M); and the deterministic ones run forwards (x_0 -> x_1, inversion).

All are driven by a noise-prediction function eps(x, t, temb) and an optional
latent-correction score c(x, t) (stage 2: s = -eps / sigma + c). Each em / pc /
ode step goes through the fused time-embedding and score-sum step
(`vdae.kernels.fused_step.reverse_step`), which also returns the sinusoidal
embedding of the next time for the next network call. "heun" is EDM's
deterministic 2nd-order sampler (Karras et al. 2022, Alg. 1) on the rho = 7
noise grid, in the scaled variable x / alpha(t) where the PF ODE is
d(x / alpha) / d(sigma / alpha) = eps_c: two network calls a step, no fused step.
"dpmpp_2m" is DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, Alg. 2): the PF
ODE solved exactly in its linear part in the log-SNR lambda = log(alpha / sigma),
with the data prediction x0 = (x - sigma eps_c) / alpha extrapolated linearly
from the last two steps; one network call a step on a grid uniform in lambda.
Its update is not the fused step's (which is Euler's), so it does not use it.
"dpmpp_2m_sde" is its reverse-SDE form (Lu et al.'s SDE-DPM-Solver++(2M)): first
order it is the DDPM posterior step, exact for a point mass; one call a step.

`invert=True` runs heun / dpmpp_2m on the reversed grid, from x_eps to x_1: the
PF ODE's encoding of x_0 (Diff-AE's stochastic code x_T), which decoding with the
same solver and grid carries back to x_0.

Shapes: x [B, H, W, C]; the step works on the flattened [B, D] view.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from vdae import schema
from vdae.diffusion import sde as sde_lib
from vdae.diffusion.score import eps_to_score
from vdae.kernels import fused_step
from vdae.models.embedding import sinusoidal
from vdae.parallel import sharding
from vdae.types import Array, CorrFn, EpsFn


def _flat(a: Array) -> Array:
  return a.reshape(a.shape[0], -1)


DDPM_STEPS = 1000  # the discretisation the corrector's alpha_i refers to


def langevin_corrector(
  x: Array, t: Array, score: Array, key: Array, snr: float, sde: sde_lib.SDE
) -> Array:
  """One Langevin MCMC step at fixed t with the step size set by the target SNR.

  Song et al. 2021, Alg. 5 (VP): step = 2 alpha_i (r ||n|| / ||s||)^2 with the
  per-step alpha_i = 1 - beta_i of the N = 1000 DDPM discretisation the SDE
  stands for (beta_i = beta(t) / N, so alpha_i >= 0.98; their code does the
  same whatever the sampler's step count). Not the cumulative alpha(t)^2,
  which switches the corrector off for t > 0.5 (4e-5 at t = 1). VE (Alg. 4)
  has no factor.
  """
  noise = jax.random.normal(key, x.shape)
  g = jnp.linalg.norm(_flat(score), axis=-1).mean()
  nn = jnp.linalg.norm(_flat(noise), axis=-1).mean()
  step = 2.0 * (snr * nn / jnp.maximum(g, 1e-12)) ** 2
  if sde.kind != "ve":
    step = step * (1.0 - sde.beta(t) / DDPM_STEPS)
  step = sde_lib.bcast(jnp.broadcast_to(step, t.shape), x)
  return x + step * score + jnp.sqrt(2.0 * step) * noise


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every solver's step reads in one sampler run: the networks, the SDE, the grid
  (num_steps + 1 times `ts`, their log-SNRs `lam`, the uniform step `dt`) and settings."""

  eps_fn: EpsFn
  corr_fn: CorrFn | None
  sde: sde_lib.SDE
  spec: fused_step.StepSpec
  ts: Array
  lam: Array
  dt: float
  b: int  # batch
  num_steps: int
  snr: float
  corrector_steps: int
  kernel: str

  def corr(self, x, t):
    return None if self.corr_fn is None else self.corr_fn(x, t)

  def eps_c(self, x, t, temb):
    """The conditional noise prediction eps - sigma c (score -eps_c / sigma)."""
    eps, c = self.eps_fn(x, t, temb), self.corr(x, t)
    return eps if c is None else eps - sde_lib.bcast(self.sde.marginal(t)[1], x) * c

  def score(self, x, t, eps):
    s = eps_to_score(eps, self.sde.marginal(t)[1])
    c = self.corr(x, t)
    return s if c is None else s + c


class Solver:
  """One reverse-time solver: the times it steps through, its carry's `aux` at the start
  and its step (i, (x, aux, key)) -> (x, aux, key). Registered in SOLVERS by name."""

  name: ClassVar[str]
  invertible: ClassVar[bool] = False  # deterministic: also runs x_0 -> x_1

  def times(self, sde: sde_lib.SDE, num_steps: int, t_start: float) -> Array:
    return jnp.linspace(t_start, sde.eps, num_steps + 1)

  def aux0(self, run: _Run, x: Array) -> Array:
    """The next step's time embedding (what the fused step carries)."""
    del x
    return sinusoidal(jnp.full((run.b,), run.ts[0]), run.spec.temb_dim, run.spec.time_scale)

  def step(self, run: _Run, i, carry):
    raise NotImplementedError


class EulerMaruyama(Solver):
  """The reverse SDE by Euler-Maruyama, through the fused step."""

  name = "em"
  noise = True

  def correct(self, run, x, t, temb, key):
    del run, t, temb, key
    return x

  def step(self, run, i, carry):
    x, temb, key = carry
    key, k_noise, k_corr = jax.random.split(key, 3)
    t = jnp.full((run.b,), run.ts[i])
    x = self.correct(run, x, t, temb, k_corr)
    eps = run.eps_fn(x, t, temb)
    c = run.corr(x, t)
    noise = jax.random.normal(k_noise, x.shape) if self.noise else None
    x_next, temb_next = fused_step.reverse_step(
      _flat(x),
      _flat(eps),
      None if c is None else _flat(c),
      None if noise is None else _flat(noise),
      t,
      run.dt,
      run.spec,
      run.kernel,
    )
    return x_next.reshape(x.shape), temb_next, key


class PredictorCorrector(EulerMaruyama):
  """Euler-Maruyama predictor after `corrector_steps` Langevin corrector steps."""

  name = "pc"

  def correct(self, run, x, t, temb, key):
    for j in range(run.corrector_steps):
      eps_j = run.eps_fn(x, t, temb)
      score = run.score(x, t, eps_j)
      x = langevin_corrector(x, t, score, jax.random.fold_in(key, j), run.snr, run.sde)
    return x


class ProbabilityFlowEuler(EulerMaruyama):
  """The probability-flow ODE by Euler's method, through the fused step."""

  name = "ode"
  noise = False


class Heun(Solver):
  """EDM's deterministic 2nd-order sampler on the Karras grid, in x / alpha(t)."""

  name = "heun"
  invertible = True

  def times(self, sde, num_steps, t_start):
    return karras_times(sde, num_steps, t_start=t_start)

  def step(self, run, i, carry):
    x, temb, key = carry
    sde, b, ts = run.sde, run.b, run.ts
    t0, t1 = jnp.full((b,), ts[i]), jnp.full((b,), ts[i + 1])
    (a0, s0), (a1, s1) = sde.marginal(t0), sde.marginal(t1)
    a0, a1, dsig = sde_lib.bcast(a0, x), sde_lib.bcast(a1, x), sde_lib.bcast(s1 / a1 - s0 / a0, x)
    xs = x / a0
    d0 = run.eps_c(x, t0, None)  # the network embeds t itself: the carried temb is unused
    d1 = run.eps_c(a1 * (xs + dsig * d0), t1, None)
    return a1 * (xs + 0.5 * dsig * (d0 + d1)), temb, key


class DPMSolverPP2M(Solver):
  """DPM-Solver++(2M) on the log-SNR grid; aux is the previous data prediction."""

  name = "dpmpp_2m"
  invertible = True
  stochastic = False

  def times(self, sde, num_steps, t_start):
    return logsnr_times(sde, num_steps, t_start)

  def aux0(self, run, x):
    return jnp.zeros_like(x)

  def step(self, run, i, carry):
    x, x0_prev, key = carry
    sde, b, ts, lam = run.sde, run.b, run.ts, run.lam
    lower_final = run.num_steps < 15  # DPM-Solver's advice: 1st order last step at few steps
    t0, t1 = jnp.full((b,), ts[i]), jnp.full((b,), ts[i + 1])
    (a0, s0), (a1, s1) = sde.marginal(t0), sde.marginal(t1)
    h = lam[i + 1] - lam[i]
    h_prev = lam[i] - lam[jnp.maximum(i - 1, 0)]
    eps = run.eps_c(x, t0, None)
    x0 = (x - sde_lib.bcast(s0, x) * eps) / sde_lib.bcast(a0, x)
    second = (i > 0) & ~(lower_final & (i == run.num_steps - 1))
    # D = x0 + (x0 - x0_prev) / (2 r), r = h_prev / h (Alg. 2); x0 itself on the first step.
    w = jnp.where(second, 0.5 * h / jnp.where(second, h_prev, 1.0), 0.0)
    d = x0 + w * (x0 - x0_prev)
    if not self.stochastic:  # x_t = (s_t / s_s) x_s + a_t (1 - e^-h) D
      x_next = sde_lib.bcast(s1 / s0, x) * x - sde_lib.bcast(a1 * jnp.expm1(-h), x) * d
      return x_next, x0, key
    # SDE-DPM-Solver++(2M): the same in the reverse SDE, whose first-order step is the
    # DDPM posterior step: x_t = (s_t / s_s) e^-h x_s + a_t (1 - e^-2h) D + s_t sqrt(1 - e^-2h) n.
    key, k_noise = jax.random.split(key)
    noise = jax.random.normal(k_noise, x.shape)
    one_minus = -jnp.expm1(-2.0 * h)
    x_next = (
      sde_lib.bcast(s1 / s0 * jnp.exp(-h), x) * x
      + sde_lib.bcast(a1 * one_minus, x) * d
      + sde_lib.bcast(s1 * jnp.sqrt(one_minus), x) * noise
    )
    return x_next, x0, key


class SDEDPMSolverPP2M(DPMSolverPP2M):
  """DPM-Solver++(2M)'s reverse-SDE form: first order, the DDPM posterior step."""

  name = "dpmpp_2m_sde"
  invertible = False
  stochastic = True


SOLVERS: dict[str, Solver] = {
  s.name: s
  for s in (
    EulerMaruyama(),
    PredictorCorrector(),
    ProbabilityFlowEuler(),
    Heun(),
    DPMSolverPP2M(),
    SDEDPMSolverPP2M(),
  )
}
METHODS = tuple(SOLVERS)  # sampling.method's choices
INVERTIBLE = tuple(n for n, s in SOLVERS.items() if s.invertible)  # x_0 -> x_1 as well
LOOPS = ("auto", "scan", "python")  # sampling.loop (compile_sampler)


def _sampler_parts(
  eps_fn: EpsFn,
  corr_fn: CorrFn | None,
  shape: tuple[int, ...],
  sde: sde_lib.SDE,
  spec: fused_step.StepSpec,
  method: str,
  num_steps: int,
  snr: float,
  corrector_steps: int,
  kernel: str,
  invert: bool = False,
  t_start: float = 1.0,
  mesh=None,
):
  """(init(key, x_init) -> carry, body(i, carry) -> carry) of one sampler run, from
  t_start (1: the prior; below 1, SDEdit: x_init is x at t_start) down to eps.
  mesh: the carry's batch axis is laid out over its batch axes, so each device
  integrates its own rows (None: XLA's choice, replicated for replicated inputs).

  The carry is (x, aux, key): aux is the next step's time embedding (em / pc /
  ode), the previous data prediction (dpmpp_2m), or unused (heun)."""
  solver = SOLVERS[schema.require("sampling.method", method, METHODS)]
  b = shape[0]
  ts = solver.times(sde, num_steps, t_start)
  if invert:
    if not solver.invertible:
      raise ValueError(
        f"invert needs a deterministic solver ({', '.join(INVERTIBLE)}), not {method!r}"
      )
    ts = ts[::-1]
  dt = (t_start - sde.eps) / num_steps
  lam = sde_lib.log_snr(sde, ts)
  run = _Run(eps_fn, corr_fn, sde, spec, ts, lam, dt, b, num_steps, snr, corrector_steps, kernel)

  def init(key, x_init):
    k_init, k_loop = jax.random.split(key)
    if x_init is None and (invert or t_start < 1.0):
      raise ValueError("invert and t_start < 1 start from given data: pass x_init")
    x = sde.prior_sample(k_init, shape) if x_init is None else x_init
    aux = solver.aux0(run, x)
    return (*sharding.constrain_batch((x, aux), mesh, b), k_loop)

  return init, functools.partial(solver.step, run)


def time_grid(sde: sde_lib.SDE, method: str, num_steps: int, t_start: float = 1.0) -> Array:
  """The num_steps + 1 times from t_start down to eps `method` steps through: Karras's
  rho = 7 grid for heun, uniform in log-SNR for dpmpp_2m(_sde), uniform in t otherwise."""
  return SOLVERS[method].times(sde, num_steps, t_start)


def logsnr_times(sde: sde_lib.SDE, num_steps: int, t_start: float = 1.0) -> Array:
  """num_steps + 1 times from t_start to eps equally spaced in lambda = log(alpha / sigma)."""
  top, bottom = sde_lib.log_snr(sde, jnp.array([t_start, sde.eps]))
  lam = jnp.linspace(top, bottom, num_steps + 1)
  ts = sde.time_of_noise_level(jnp.exp(-lam))
  return jnp.clip(ts, sde.eps, t_start).at[0].set(t_start).at[-1].set(sde.eps)


def karras_times(sde: sde_lib.SDE, num_steps: int, rho: float = 7.0, t_start: float = 1.0) -> Array:
  """num_steps + 1 times from t_start to eps whose noise levels sigma(t) / alpha(t) follow
  Karras et al.'s grid (sigma_max^(1/rho) -> sigma_min^(1/rho) linearly, then ^rho)."""
  ends = jnp.array([t_start, sde.eps])
  alpha, sigma = sde.marginal(ends)
  top, bottom = (sigma / alpha) ** (1.0 / rho)
  levels = jnp.linspace(top, bottom, num_steps + 1) ** rho
  ts = jnp.clip(sde.time_of_noise_level(levels), sde.eps, t_start)
  return ts.at[0].set(t_start).at[-1].set(sde.eps)


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
  invert: bool = False,
  t_start: float = 1.0,
  mesh=None,
) -> Array:
  """Draws x_eps from x_1 ~ prior (or `x_init`) by integrating from t=1 to t=eps;
  from t_start < 1 instead, x_init is x at t_start (SDEdit).

  method: "em" Euler-Maruyama reverse SDE, "pc" EM predictor + Langevin
  corrector, "ode" probability-flow ODE (Euler; deterministic given x_init),
  "heun" the PF ODE by Heun's method on the Karras grid (2 calls a step),
  "dpmpp_2m" DPM-Solver++(2M) on the log-SNR grid (1 call a step), "dpmpp_2m_sde"
  its reverse-SDE form (1 call a step).
  denoise: final Tweedie step x0 = (x - sigma eps) / alpha at t = eps.
  invert: integrate the PF ODE from x_init at t = eps up to t = 1 instead
  (heun / dpmpp_2m; no denoise step).
  One traceable program (a fori_loop): use it inside jit; `compile_sampler`
  is the compiled form with a loop chosen for the backend.
  """
  init, body = _sampler_parts(
    eps_fn,
    corr_fn,
    shape,
    sde,
    spec,
    method,
    num_steps,
    snr,
    corrector_steps,
    kernel,
    invert,
    t_start,
    mesh,
  )
  x, _, _ = jax.lax.fori_loop(0, num_steps, body, init(key, x_init))
  return tweedie_denoise(eps_fn, x, sde, corr_fn) if denoise and not invert else x


def compile_sampler(
  make_fns: Callable[[Any], tuple[EpsFn, CorrFn | None]],
  sampling_cfg,
  sde: sde_lib.SDE,
  spec: fused_step.StepSpec,
  shape: tuple[int, ...],
  out_sharding=None,
  invert: bool = False,
  t_start: float = 1.0,
  mesh=None,
) -> Callable[..., Array]:
  """Compiled sampler: f(args, key, x_init=None) -> x [N, H, W, C].

  mesh: split the batch over its batch axes (see `_sampler_parts`); pass inputs
  laid out the same way (`sharding.batch_from_host`) to avoid a reshard.

  make_fns(args) builds (eps_fn, corr_fn) from the pytree `args` (params, z),
  which are passed, never closed over, so they are not baked into the program.
  sampling.loop: "scan" compiles the whole run as one fori_loop; "python"
  compiles one step and calls it num_steps times. invert: the PF ODE from
  x_init = x_0 up to t = 1 (see `sample`). "auto" picks python on CPU,
  where XLA runs convolution input-gradients (the latent-correction score)
  inside a while loop on a path measured 17x slower than outside one, and
  scan elsewhere (no per-step dispatch).
  """
  loop = schema.require("sampling.loop", sampling_cfg.loop, LOOPS)
  if loop == "auto":
    loop = "python" if jax.default_backend() == "cpu" else "scan"
  kw = dict(
    sde=sde,
    spec=spec,
    method=sampling_cfg.method,
    num_steps=sampling_cfg.num_steps,
    snr=sampling_cfg.snr,
    corrector_steps=sampling_cfg.corrector_steps,
    kernel=sampling_cfg.kernel,
    invert=invert,
    t_start=t_start,
    mesh=mesh,
  )
  denoise = sampling_cfg.denoise and not invert
  return CompiledSampler(make_fns, kw, shape, denoise, loop, out_sharding)


class CompiledSampler:
  """A sampler compiled for one shape: `self(args, key, x_init=None) -> x`.

  `precompile(args, key)` compiles ahead of time (e.g. to keep compilation
  out of timings); otherwise the first call compiles.
  """

  def __init__(self, make_fns, kw, shape, denoise, loop, out_sharding):
    self.loop, self.num_steps = loop, kw["num_steps"]
    sde = kw["sde"]

    def parts(args):
      eps_fn, corr_fn = make_fns(args)
      return eps_fn, corr_fn, _sampler_parts(eps_fn, corr_fn, shape, **kw)

    def whole(args, key, x_init):
      eps_fn, corr_fn = make_fns(args)
      return sample(eps_fn, shape, key, corr_fn=corr_fn, denoise=denoise, x_init=x_init, **kw)

    def finish(args, carry):
      eps_fn, corr_fn = make_fns(args)
      return tweedie_denoise(eps_fn, carry[0], sde, corr_fn) if denoise else carry[0]

    self._whole = jax.jit(whole, out_shardings=out_sharding)
    self._init = jax.jit(lambda args, key, x_init: parts(args)[2][0](key, x_init))
    self._step = jax.jit(lambda args, i, carry: parts(args)[2][1](i, carry), donate_argnums=2)
    self._finish = jax.jit(finish, out_shardings=out_sharding)
    self._compiled = False

  def precompile(self, args, key, x_init=None) -> None:
    """Compiles for these argument shapes (once: later calls do nothing)."""
    if self._compiled:
      return
    self._compiled = True
    if self.loop == "scan":
      self._whole = self._whole.lower(args, key, x_init).compile()
      return
    # Warm the jit caches by running init, two steps and the finish rather than
    # AOT-compiling them: the step's output may be laid out unlike init's (a
    # replicated x_init vs fresh noise under fsdp), and jit then compiles both
    # layouts here instead of failing on the second call.
    carry = self._init(args, key, x_init)
    for i in range(min(2, self.num_steps)):
      carry = self._step(args, jnp.int32(i), carry)
    jax.block_until_ready(self._finish(args, carry))

  def __call__(self, args, key, x_init=None) -> Array:
    if self.loop == "scan":
      return self._whole(args, key, x_init)
    carry = self._init(args, key, x_init)
    for i in range(self.num_steps):
      carry = self._step(args, jnp.int32(i), carry)
    return self._finish(args, carry)


def tweedie_denoise(eps_fn: EpsFn, x: Array, sde: sde_lib.SDE, corr_fn: CorrFn | None = None):
  """E[x0 | x_t] at t = eps: (x - sigma eps_c) / alpha, eps_c = eps - sigma c."""
  t = jnp.full((x.shape[0],), sde.eps)
  alpha, sigma = sde.marginal(t)
  eps = eps_fn(x, t, None)
  if corr_fn is not None:
    eps = eps - sde_lib.bcast(sigma, x) * corr_fn(x, t)
  return (x - sde_lib.bcast(sigma, x) * eps) / sde_lib.bcast(alpha, x)
