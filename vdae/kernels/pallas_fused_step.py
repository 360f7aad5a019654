"""Pallas kernels for the fused time-embedding and score-sum step.

Two kernels, each one `pl.pallas_call` over a grid of (batch block, D block):

* `fused_reverse_step`  == `reference.reference_reverse_step`
* `fused_stage2_residual` == `reference.reference_stage2_residual` (custom_vjp)

The work is elementwise over [B, D] plus per-example scalars, i.e. memory
bound: the point of fusing is to read x, eps, c, noise once and write x_next
once, with sigma(t), f(t), g(t)^2 and the next time embedding computed from
t in the same pass instead of as separate XLA ops with [B]-sized
intermediates and a separate embedding launch.

Layout. Blocks are (bb, bd) with bd a power of two >= 128 (TPU lane tiling;
Triton needs power-of-two blocks) and bb a power of two >= 8 (TPU sublanes).
B and D are padded up to multiples of (bb, bd) only when they are not already
(the benchmark shapes never need it); per-example t and dt travel as
[B_pad, 1] blocks, whose last dim equals the full array dim, which both TPU and
Triton accept. The embedding output is [B_pad, temb_pad] with temb_pad a power
of two >= 128, written once per batch block (at D block 0).

Portability. Only `pl.pallas_call`, `BlockSpec`, `pl.program_id`, `pl.when`
and `jnp`/`lax` elementwise ops are used, so the same kernel lowers through
Mosaic (TPU) and Triton (GPU; selected explicitly, see `_compiler_params`) and
runs under `interpret=True` on CPU. tests/unit/kernels_test.py checks both
lowerings with `jax.export` on CPU; neither has been run on hardware yet. Mosaic
has no `expm1` lowering, so `_expm1` below is Kahan's exp/log formulation,
accurate to a few ulp where the naive exp(x) - 1 would lose ~4 digits at the
small t (t ~ 1e-3) the sampler ends at. The residual's per-row reduction over
D is done without cross-program accumulation (which would need sequential
grid semantics that Triton does not have): each (batch block, D block)
program writes its partial row sums to its own [bb, 128] output tile and the
few partials are summed outside the kernel.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from vdae.diffusion import sde as sde_lib
from vdae.kernels.reference import StepSpec

Array = jax.Array

_LANE = 128  # TPU lane width: last block dim multiple.
_SUBLANE = 8  # TPU sublane count: second-to-last block dim multiple.


# --- tiling ------------------------------------------------------------------


class _Tiling(NamedTuple):
  """Static block layout of a [B, D] problem: padded sizes and block sizes."""

  b_pad: int
  d_pad: int
  bb: int
  bd: int

  @property
  def grid(self) -> tuple[int, int]:
    return (self.b_pad // self.bb, self.d_pad // self.bd)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _pick_block(n: int, align: int, cap: int) -> int:
  """Power-of-two block in [align, cap] that minimises padding of n (ties: larger)."""
  best, best_pad = align, _round_up(n, align)
  size = align
  while size <= cap:
    padded = _round_up(n, size)
    if padded <= best_pad:
      best, best_pad = size, padded
    size *= 2
  return best


def _tiling(
  b: int, d: int, target: str, block_b: int | None = None, block_d: int | None = None
) -> _Tiling:
  """Chooses blocks for a [b, d] problem.

  TPU / interpret: up to 2^17 elements per block (512 KiB of f32 per operand;
  the step's 5 [B, D] operands double-buffered stay ~5 MiB, under the 16 MiB
  default scoped VMEM of the smallest current TPU). GPU: 2^13 elements per
  program so a block stays in registers with Triton's default 4 warps.
  """
  gpu = target == "gpu"
  max_elems, bd_cap, bb_cap = (1 << 13, 1024, 64) if gpu else (1 << 17, 2048, 256)
  bd = block_d or _pick_block(d, _LANE, bd_cap)
  bb = block_b or _pick_block(b, _SUBLANE, min(bb_cap, max(_SUBLANE, max_elems // bd)))
  for name, v, align in (("block_b", bb, _SUBLANE), ("block_d", bd, _LANE)):
    if v % align or v & (v - 1):
      raise ValueError(f"{name} must be a power of two and a multiple of {align}; got {v}")
  return _Tiling(_round_up(b, bb), _round_up(d, bd), bb, bd)


def _temb_pad(temb_dim: int) -> int:
  return max(_LANE, pl.next_power_of_2(max(temb_dim, 1)))


def _pad2(a: Array, rows: int, cols: int, value: float = 0.0) -> Array:
  """Pads a 2-D array at the end to [rows, cols]; no copy when already that shape."""
  pr, pc = rows - a.shape[0], cols - a.shape[1]
  if pr == 0 and pc == 0:
    return a
  return jnp.pad(a, ((0, pr), (0, pc)), constant_values=value)


def _rows(v: Array, b_pad: int, value: float) -> Array:
  """Per-example [B] -> float32 [b_pad, 1] column (padded rows get `value`)."""
  return _pad2(v.astype(jnp.float32).reshape(-1, 1), b_pad, 1, value)


def _resolve_interpret(interpret: bool | None) -> bool:
  return jax.default_backend() == "cpu" if interpret is None else bool(interpret)


def _target(interpret: bool) -> str:
  """'interpret', 'gpu' or 'tpu': picks block sizes and the GPU lowering."""
  if interpret:
    return "interpret"
  return "gpu" if jax.default_backend() == "gpu" else "tpu"


def _compiler_params(target: str):
  """Triton on GPU: in this jax `pl.pallas_call` otherwise defaults to Mosaic GPU,
  whose copies need warpgroup-sized (128 x 4 B) rows that the [bb, 1] t blocks
  are not. TPU / interpret: defaults."""
  if target != "gpu":
    return None
  from jax.experimental.pallas import triton as pl_triton

  return pl_triton.CompilerParams(num_warps=4)


# --- in-kernel math (the SDE's own formulas; the embedding must track vdae/models/embedding.py)


def _expm1(x: Array) -> Array:
  """exp(x) - 1 to a few ulp from exp and log only (Kahan), since Mosaic has no expm1.

  With u = fl(exp(x)): (u - 1) * x / log(u) cancels the rounding error of u.
  """
  u = jnp.exp(x)
  um1 = u - 1.0
  one = u == 1.0
  log_u = jnp.log(jnp.where(one, 2.0, u))  # keep the unused branch finite
  return jnp.where(one, x, jnp.where(um1 == -1.0, -1.0, um1 * x / log_u))


def _coefficients(sde: sde_lib.SDE, t: Array) -> tuple[Array | None, Array, Array]:
  """(f(t), g(t)^2, sigma(t)) elementwise: the SDE's own formulas, with `_expm1`; f is
  None when the SDE has no drift (VE: the kernel drops the f x term)."""
  f, g2 = sde.sde_coefficients(t, expm1=_expm1)
  return (f if sde.has_drift else None), g2, sde.sigma(t, expm1=_expm1)


def _sinusoidal_tile(tn: Array, half: int, time_scale: float, width: int) -> Array:
  """`embedding.sinusoidal` of tn [bb, 1] laid out in a [bb, width] tile.

  Column j < half is sin(arg_j), half <= j < 2 half is cos(arg_{j - half});
  columns >= 2 half are padding. One select instead of a lane concatenation.
  """
  j = lax.broadcasted_iota(jnp.int32, (1, width), 1)
  is_sin = j < half
  k = jnp.where(is_sin, j, j - half).astype(jnp.float32)
  freqs = jnp.exp(-math.log(10000.0) * k / max(half - 1, 1))
  arg = (tn * time_scale) * freqs
  return jnp.where(is_sin, jnp.sin(arg), jnp.cos(arg))


# --- reverse step --------------------------------------------------------------


def _step_kernel(
  *refs, sde: sde_lib.SDE, has_c: bool, has_noise: bool, half: int, time_scale: float
):
  """One (batch block i, D block j) program of the reverse step.

  refs: t, dt [bb, 1]; x, eps, (c), (noise) [bb, bd]; outputs x_next [bb, bd],
  temb [bb, temb_pad].
  """
  t_ref, dt_ref, x_ref, eps_ref, *rest = refs
  c_ref = rest.pop(0) if has_c else None
  noise_ref = rest.pop(0) if has_noise else None
  xn_ref, temb_ref = rest

  t = t_ref[...]
  dt = dt_ref[...]
  f, g2, sigma = _coefficients(sde, t)
  # Operation order follows the reference so the results agree to rounding.
  x = x_ref[...].astype(jnp.float32)
  score = -eps_ref[...].astype(jnp.float32) / sigma
  if has_c:
    score = score + c_ref[...].astype(jnp.float32)
  w = 1.0 if has_noise else 0.5  # reverse SDE vs probability-flow ODE
  wg2s = (w * g2) * score
  drift = -wg2s if f is None else f * x - wg2s
  x_next = x - drift * dt
  if has_noise:
    x_next = x_next + jnp.sqrt(g2 * dt) * noise_ref[...].astype(jnp.float32)
  xn_ref[...] = x_next.astype(xn_ref.dtype)

  # The embedding block is the same for every D block of a batch block: write
  # it once. On Triton each program stores straight to HBM, on TPU the grid
  # runs sequentially and the block stays resident across j, so either way
  # the j == 0 write is what lands.
  @pl.when(pl.program_id(1) == 0)
  def _():
    temb_ref[...] = _sinusoidal_tile(t - dt, half, time_scale, temb_ref.shape[-1])


@functools.partial(jax.jit, static_argnames=("spec", "target", "tiling"))
def _reverse_step_jit(x, eps, c, noise, t, dt, spec: StepSpec, target: str, tiling: _Tiling):
  b, d = x.shape
  tp = _temb_pad(spec.temb_dim)
  half = spec.temb_dim // 2
  has_c, has_noise = c is not None, noise is not None
  bp, dp, bb, bd = tiling

  dt = jnp.broadcast_to(jnp.asarray(dt, jnp.float32), t.shape)
  # Padded rows get t = 1 so sigma > 0 there for every SDE kind (no inf/nan in
  # the discarded rows); padded columns are zeros and are sliced off.
  mats = [x, eps] + ([c] if has_c else []) + ([noise] if has_noise else [])
  args = [_rows(t, bp, 1.0), _rows(dt, bp, 0.0)] + [_pad2(m, bp, dp) for m in mats]

  row_spec = pl.BlockSpec((bb, 1), lambda i, j: (i, 0))
  mat_spec = pl.BlockSpec((bb, bd), lambda i, j: (i, j))
  n_mats = len(mats)
  bytes_accessed = sum(m.size * m.dtype.itemsize for m in mats) + x.size * x.dtype.itemsize
  bytes_accessed += 4 * (2 * b + b * spec.temb_dim)
  kernel = functools.partial(
    _step_kernel,
    sde=spec.sde,
    has_c=has_c,
    has_noise=has_noise,
    half=half,
    time_scale=spec.time_scale,
  )
  x_next, temb = pl.pallas_call(
    kernel,
    out_shape=(
      jax.ShapeDtypeStruct((bp, dp), x.dtype),
      jax.ShapeDtypeStruct((bp, tp), jnp.float32),
    ),
    grid=tiling.grid,
    in_specs=[row_spec, row_spec] + [mat_spec] * n_mats,
    out_specs=(mat_spec, pl.BlockSpec((bb, tp), lambda i, j: (i, 0))),
    interpret=target == "interpret",
    compiler_params=_compiler_params(target),
    name="vdae_fused_reverse_step",
    cost_estimate=pl.CostEstimate(
      flops=int(8 * b * d + 8 * b * spec.temb_dim),
      transcendentals=int(3 * b + 2 * b * spec.temb_dim),
      bytes_accessed=int(bytes_accessed),
    ),
  )(*args)
  return x_next[:b, :d], temb[:b, : 2 * half]


def fused_reverse_step(
  x: Array,
  eps: Array,
  c: Array | None,
  noise: Array | None,
  t: Array,
  dt: Array | float,
  spec: StepSpec,
  interpret: bool | None = None,
  *,
  block_b: int | None = None,
  block_d: int | None = None,
) -> tuple[Array, Array]:
  """One reverse-time step t -> t - dt in one Pallas kernel.

  Reference: `vdae.kernels.reference.reference_reverse_step`, i.e.

    f, g2 = sde.sde_coefficients(t); _, sigma = sde.marginal(t)
    s = -eps / sigma[:, None] + (c if c is not None else 0)
    w = 1 if noise is not None else 1/2          # Euler-Maruyama / PF-ODE Euler
    x_next = x - (f[:, None] x - (w g2)[:, None] s) dt[:, None]
             (+ sqrt(g2 dt)[:, None] noise)
    temb_next = embedding.sinusoidal(t - dt, spec.temb_dim, spec.time_scale)

  Args:
    x: [B, D] state at t (its dtype is the output's; math is float32).
    eps: [B, D] noise prediction eps_theta(x, t).
    c: [B, D] latent-correction score, or None (the kernel is specialised
      without that operand rather than reading zeros).
    noise: [B, D] standard normal for the reverse SDE, or None for the
      probability-flow ODE.
    t: [B] current time.
    dt: scalar or [B] positive step size.
    spec: SDE kind/parameters and embedding layout (static).
    interpret: run the kernel in Pallas interpret mode; None -> True exactly
      when the default backend is CPU.
    block_b, block_d: override the block shape (powers of two, multiples of
      8 and 128); for tests that need several blocks on small shapes.

  Returns:
    x_next [B, D] (x.dtype) and temb_next [B, 2 * (temb_dim // 2)] float32 (the
    reference's width; equal to temb_dim when it is even).

  Not differentiable through the kernel; decoding does not need gradients.
  """
  target = _target(_resolve_interpret(interpret))
  tiling = _tiling(x.shape[0], x.shape[1], target, block_b, block_d)
  return _reverse_step_jit(x, eps, c, noise, t, dt, spec=spec, target=target, tiling=tiling)


# --- stage-2 residual ------------------------------------------------------------


def _residual_kernel(*refs, sde: sde_lib.SDE, has_c: bool, save_r: bool):
  """One (i, j) program: partial row sums of r^2 over this D block.

  refs: t [bb, 1]; eps, (c), noise [bb, bd]; outputs partial [bb, 128] (the row
  sum broadcast across the tile), (r [bb, bd] float32 when saving for the VJP).
  """
  t_ref, eps_ref, *rest = refs
  c_ref = rest.pop(0) if has_c else None
  noise_ref, part_ref, *r_out = rest
  r = eps_ref[...].astype(jnp.float32)
  if has_c:
    _, _, sigma = _coefficients(sde, t_ref[...])
    r = r - sigma * c_ref[...].astype(jnp.float32)
  r = r - noise_ref[...].astype(jnp.float32)
  part_ref[...] = jnp.broadcast_to(jnp.sum(r * r, axis=-1, keepdims=True), part_ref.shape)
  if save_r:
    r_out[0][...] = r


@functools.partial(jax.jit, static_argnames=("spec", "target", "tiling", "save_r"))
def _residual_jit(eps, c, noise, t, spec: StepSpec, target: str, tiling: _Tiling, save_r: bool):
  """Returns ([B] residual, r [B_pad, D_pad] float32 or None)."""
  b, d = eps.shape
  bp, dp, bb, bd = tiling
  nb, nd = tiling.grid
  has_c = c is not None
  mats = [eps] + ([c] if has_c else []) + [noise]
  args = [_rows(t, bp, 1.0)] + [_pad2(m, bp, dp) for m in mats]
  mat_spec = pl.BlockSpec((bb, bd), lambda i, j: (i, j))
  out_shape = [jax.ShapeDtypeStruct((bp, nd * _LANE), jnp.float32)]
  out_specs = [pl.BlockSpec((bb, _LANE), lambda i, j: (i, j))]
  if save_r:
    out_shape.append(jax.ShapeDtypeStruct((bp, dp), jnp.float32))
    out_specs.append(mat_spec)
  bytes_accessed = sum(m.size * m.dtype.itemsize for m in mats) + 4 * b * (1 + nd)
  bytes_accessed += 4 * b * d if save_r else 0
  outs = pl.pallas_call(
    functools.partial(_residual_kernel, sde=spec.sde, has_c=has_c, save_r=save_r),
    out_shape=tuple(out_shape),
    grid=tiling.grid,
    in_specs=[pl.BlockSpec((bb, 1), lambda i, j: (i, 0))] + [mat_spec] * len(mats),
    out_specs=tuple(out_specs),
    interpret=target == "interpret",
    compiler_params=_compiler_params(target),
    name="vdae_fused_stage2_residual",
    cost_estimate=pl.CostEstimate(
      flops=int(5 * b * d), transcendentals=int(3 * b), bytes_accessed=int(bytes_accessed)
    ),
  )(*args)
  part = outs[0].reshape(bp, nd, _LANE)[:b, :, 0]
  return 0.5 * jnp.sum(part, axis=-1), (outs[1] if save_r else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _residual_vjp(eps, c, noise, t, spec: StepSpec, target: str, tiling: _Tiling):
  return _residual_jit(eps, c, noise, t, spec=spec, target=target, tiling=tiling, save_r=False)[0]


def _residual_fwd(eps, c, noise, t, spec, target, tiling):
  loss, r = _residual_jit(eps, c, noise, t, spec=spec, target=target, tiling=tiling, save_r=True)
  # Zero-size stand-ins carry the primal dtypes and D to the backward pass.
  dtypes = tuple(jnp.zeros((0, a.shape[1]), a.dtype) for a in (eps, noise))
  return loss, (r, c, t, dtypes)


def _residual_bwd(spec, target, tiling, res, g):
  r_pad, c, t, (eps_z, noise_z) = res
  r = r_pad[: g.shape[0], : eps_z.shape[1]]
  gr = g[:, None] * r
  d_eps = gr.astype(eps_z.dtype)
  d_noise = (-gr).astype(noise_z.dtype)
  if c is None:
    return d_eps, None, d_noise, jnp.zeros_like(t)
  sigma, dsigma = jax.jvp(lambda tt: spec.sde.marginal(tt)[1], (t,), (jnp.ones_like(t),))
  d_c = (-sigma[:, None] * gr).astype(c.dtype)
  d_t = (-g * dsigma * jnp.sum(r * c.astype(jnp.float32), axis=-1)).astype(t.dtype)
  return d_eps, d_c, d_noise, d_t


_residual_vjp.defvjp(_residual_fwd, _residual_bwd)


def fused_stage2_residual(
  eps: Array,
  c: Array | None,
  noise: Array,
  t: Array,
  spec: StepSpec,
  interpret: bool | None = None,
  *,
  block_b: int | None = None,
  block_d: int | None = None,
) -> Array:
  """Per-example stage-2 residual 1/2 ||eps - sigma(t) c - noise||^2: [B].

  Reference: `vdae.kernels.reference.reference_stage2_residual`, i.e.

    _, sigma = sde.marginal(t)
    r = eps - sigma[:, None] * c - noise
    0.5 * jnp.sum(r * r, axis=-1)

  Args:
    eps, noise: [B, D]; c: [B, D] or None (no correction: r = eps - noise);
    t: [B]; spec: static; interpret / block_b / block_d as in
    `fused_reverse_step`.

  Gradients (jax.custom_vjp; equal to jax.grad of the reference): with g the
  [B] cotangent and r the residual, d eps = g r, d c = -sigma g r,
  d noise = -g r, d t = -g sigma'(t) sum_D(r c). The differentiated forward
  runs a variant of the kernel that also writes r (float32, [B_pad, D_pad]), and
  the backward is plain jnp on it rather than a second Pallas kernel: it is
  a single elementwise pass with no reduction (d t's [B] sum aside), which
  XLA fuses into whatever consumes the cotangents (the score network's and
  encoder's backprop), whereas a kernel would be an opaque fusion barrier;
  saving r costs one [B, D] write and saves re-reading eps, c and noise.
  """
  target = _target(_resolve_interpret(interpret))
  tiling = _tiling(eps.shape[0], eps.shape[1], target, block_b, block_d)
  return _residual_vjp(eps, c, noise, t, spec, target, tiling)
