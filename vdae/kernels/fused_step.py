"""Dispatch of the fused step: the Pallas kernel or the reference.

Callers use `reverse_step` / `stage2_residual`, which dispatch on `impl`
(`sampling.kernel`):
  "auto"      -> the Pallas kernel on GPU/TPU, the reference on CPU;
  "pallas"    -> the kernel (interpret mode on CPU, for tests);
  "reference" -> the reference (kernels/reference.py).
"""

from __future__ import annotations

import jax

from vdae import schema
from vdae.kernels import pallas_fused_step
from vdae.kernels.reference import (
  StepSpec,
  reference_reverse_step,
  reference_stage2_residual,
)

__all__ = ["StepSpec", "reverse_step", "stage2_residual"]


IMPLS = ("auto", "pallas", "reference")  # sampling.kernel: auto = Pallas on GPU/TPU


def _use_pallas(impl: str) -> bool:
  schema.require("sampling.kernel", impl, IMPLS)
  if impl == "auto":
    return jax.default_backend() in ("gpu", "tpu")
  return impl == "pallas"


def reverse_step(x, eps, c, noise, t, dt, spec: StepSpec, impl: str = "auto"):
  """Dispatching form of `reference_reverse_step` (same signature + impl)."""
  if _use_pallas(impl):
    return pallas_fused_step.fused_reverse_step(x, eps, c, noise, t, dt, spec)
  return reference_reverse_step(x, eps, c, noise, t, dt, spec)


def stage2_residual(eps, c, noise, t, spec: StepSpec, impl: str = "auto"):
  """Dispatching form of `reference_stage2_residual` (same signature + impl)."""
  if _use_pallas(impl):
    return pallas_fused_step.fused_stage2_residual(eps, c, noise, t, spec)
  return reference_stage2_residual(eps, c, noise, t, spec)
