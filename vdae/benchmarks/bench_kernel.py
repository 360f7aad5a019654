"""Times the fused Pallas step against its jnp reference and an unfused baseline.

  python -m vdae.benchmarks.bench_kernel [--repeats 20] [--shapes 256x64,256x3072] [--op all]

Implementations, for decoding-step shapes [B, D] (digits 8x8 -> D = 64, MNIST
784, CIFAR 32x32x3 = 3072, 64x64x3 = 12288; batch 256):
  reference  `reference_reverse_step` / `reference_stage2_residual` under one
             jax.jit (XLA fuses what it can);
  unfused    the same math as separate jitted stages (coefficients, score sum,
             update, embedding), each materialising its result in memory: what
             the step costs without any fusion;
  kernel     the Pallas kernels (`pallas_fused_step`), only on GPU/TPU. On CPU
             they run in interpret mode, an emulator for tests whose speed says
             nothing about the kernel, so they are not timed there.

Per call: median wall time over --repeats after warm-up, each call waited on
with block_until_ready; GB/s = the bytes the step must move at minimum (read
x, eps, c, noise, t, dt; write x_next and the embedding; the residual reads
eps, c, noise, t and writes [B]) / time, so the unfused baseline's extra
traffic shows as a lower figure; "vs ref" = reference time / this time.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

try:
  import vdae  # noqa: F401
except ImportError:  # run as a script from a checkout without installing the package
  sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from vdae.diffusion import sde as sde_lib  # noqa: E402
from vdae.kernels import reference as fs  # noqa: E402
from vdae.models.embedding import sinusoidal  # noqa: E402
from vdae.parallel import runtime  # noqa: E402

DEFAULT_SHAPES = "256x64,256x784,256x3072,256x12288"


def parse_shapes(text: str) -> list[tuple[int, int]]:
  """'256x64,128x3072' -> [(256, 64), (128, 3072)]; a bare 'D' means batch 256."""
  shapes = []
  for item in text.split(","):
    b, _, d = item.strip().lower().rpartition("x")
    shapes.append((int(b) if b else 256, int(d)))
  if not shapes or any(b < 1 or d < 1 for b, d in shapes):
    raise argparse.ArgumentTypeError(f"bad --shapes {text!r}")
  return shapes


def time_call(fn: Callable[[], object], repeats: int, warmup: int, deadline: float) -> float:
  """Median seconds per call; stops early (keeping >= 1 sample) past `deadline`."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    samples.append(time.perf_counter() - start)
    if time.perf_counter() > deadline:
      break
  return statistics.median(samples)


def unfused_step(spec: fs.StepSpec) -> Callable:
  """The reverse step as separately jitted stages with materialised intermediates."""
  sde = spec.sde

  @jax.jit
  def coefficients(t):
    f, g2 = sde.sde_coefficients(t)
    return f, g2, sde.marginal(t)[1]

  @jax.jit
  def score_sum(eps, c, sigma):
    return -eps / sigma[:, None] + c

  @jax.jit
  def update(x, score, noise, f, g2, dt):
    x_next = x - (f[:, None] * x - g2[:, None] * score) * dt[:, None]
    return x_next + jnp.sqrt(g2 * dt)[:, None] * noise

  @jax.jit
  def embedding(t, dt):
    return sinusoidal(t - dt, spec.temb_dim, spec.time_scale)

  def step(x, eps, c, noise, t, dt):
    f, g2, sigma = coefficients(t)
    score = score_sum(eps, c, sigma)
    return update(x, score, noise, f, g2, dt), embedding(t, dt)

  return step


def unfused_residual(spec: fs.StepSpec) -> Callable:
  sigma_of = jax.jit(lambda t: spec.sde.marginal(t)[1])
  diff = jax.jit(lambda eps, c, noise, sigma: eps - sigma[:, None] * c - noise)
  half_sq = jax.jit(lambda r: 0.5 * jnp.sum(r * r, axis=-1))
  return lambda eps, c, noise, t: half_sq(diff(eps, c, noise, sigma_of(t)))


def implementations(op: str, spec: fs.StepSpec, on_accel: bool) -> dict[str, Callable]:
  """name -> function of the op's operands (x, eps, c, noise, t, dt) or (eps, c, noise, t).

  Each is jitted whole (spec static) so all pay the same single dispatch.
  """
  step = op == "step"
  impls = {
    "reference": jax.jit(
      functools.partial(
        fs.reference_reverse_step if step else fs.reference_stage2_residual, spec=spec
      )
    ),
    "unfused": unfused_step(spec) if step else unfused_residual(spec),
  }
  if on_accel:
    from vdae.kernels import pallas_fused_step as pf

    kernel = pf.fused_reverse_step if step else pf.fused_stage2_residual
    impls["kernel"] = jax.jit(functools.partial(kernel, spec=spec))
  return impls


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=20, help="timed calls per case (>= 1)")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls first (compile)")
  p.add_argument(
    "--shapes",
    type=parse_shapes,
    default=parse_shapes(DEFAULT_SHAPES),
    help=f"comma list of BxD (default {DEFAULT_SHAPES})",
  )
  p.add_argument("--op", choices=("step", "residual", "all"), default="all")
  p.add_argument("--sde", choices=("vp", "subvp", "ve"), default="vp")
  p.add_argument("--temb-dim", type=int, default=128)
  p.add_argument(
    "--max-seconds",
    type=float,
    default=100.0,
    help="overall time budget; cases past it are skipped",
  )
  args = p.parse_args(argv)
  if args.repeats < 1 or args.warmup < 0:
    p.error("--repeats must be >= 1 and --warmup >= 0")

  backend = jax.default_backend()
  on_accel = backend in ("gpu", "tpu")
  spec = fs.StepSpec(sde_lib.make(args.sde), temb_dim=args.temb_dim, time_scale=1000.0)
  deadline = time.perf_counter() + args.max_seconds
  print(
    f"backend={backend} device={jax.devices()[0].device_kind} sde={args.sde} "
    f"temb_dim={args.temb_dim} repeats={args.repeats} (median per call)"
  )
  if not on_accel:
    print(
      "kernel: not timed on CPU -- the Pallas kernel needs an accelerator (GPU/TPU); "
      "here it only runs in interpret mode, an emulator for tests."
    )
  print(f"{'op':<9}{'B x D':<12}{'impl':<11}{'time/call':>12}{'GB/s':>9}{'vs ref':>9}")

  ops = ("step", "residual") if args.op == "all" else (args.op,)
  skipped = 0
  for b, d in args.shapes:
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    x, eps, c, noise = (jax.random.normal(k, (b, d), jnp.float32) for k in ks[:4])
    t = jax.random.uniform(ks[4], (b,), jnp.float32, spec.sde.eps, 1.0)
    dt = jnp.full((b,), 1e-3, jnp.float32)
    for op in ops:
      if time.perf_counter() > deadline:
        skipped += 1
        continue
      if op == "step":
        nbytes = 4 * (5 * b * d + 2 * b + b * spec.temb_dim)
        operands = (x, eps, c, noise, t, dt)
      else:
        nbytes = 4 * (3 * b * d + 2 * b)
        operands = (eps, c, noise, t)
      ref_time = None
      for name, fn in implementations(op, spec, on_accel).items():
        call = functools.partial(fn, *operands)
        sec = time_call(call, args.repeats, args.warmup, deadline)
        ref_time = sec if name == "reference" else ref_time
        print(
          f"{op:<9}{f'{b}x{d}':<12}{name:<11}{sec * 1e3:>9.3f} ms"
          f"{nbytes / sec / 1e9:>9.2f}{ref_time / sec:>8.2f}x",
          flush=True,
        )
      if not on_accel:
        print(f"{op:<9}{f'{b}x{d}':<12}{'kernel':<11}{'(needs an accelerator)':>30}")
  if skipped:
    print(f"time budget --max-seconds={args.max_seconds} reached: {skipped} case(s) skipped")


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
