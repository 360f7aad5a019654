"""Benchmarks that print figures with ratios against a baseline measured in the same run.

Every benchmark is an entry point that runs steps in-process, not through the command
runner: the package sets the CPU kernels the product uses (runtime.cpu_ynnpack's
default) before any of them starts a backend, so their figures are the product's.
VDAE_CPU_YNNPACK=1 runs them with XLA's default (YNNPACK's fusions) instead."""

from vdae.parallel import runtime as _runtime

_runtime.default_cpu_kernels()
