"""Benchmarks that print figures with ratios against a baseline measured in the same run.

Every benchmark is an entry point that runs steps in-process, not through the command
runner; each sets the CPU kernels the product uses (runtime.cpu_ynnpack's default) when
run as a program, before it starts a backend, so their figures are the product's.
VDAE_CPU_YNNPACK=1 runs them with XLA's default (YNNPACK's fusions) instead. Importing
the package changes nothing in the process."""
