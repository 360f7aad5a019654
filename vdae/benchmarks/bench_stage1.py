"""Times the stage-1 train step on the digits config and a 32x32x3 config.

Prints steps/s, examples/s, achieved FLOP/s (XLA cost analysis x measured
rate) and its ratio to this machine's measured float32 matmul peak, and the
examples/s the Grain pipeline delivers on its own against what the step
consumes. The same FLOP/s figure goes to TensorBoard as
perf/flops_per_sec_per_device during training.

  python -m vdae.benchmarks.bench_stage1 [--repeats 10] [--only digits|32x32]
"""

from __future__ import annotations

import argparse
import tempfile

import jax

from configs import digits
from vdae.benchmarks import common
from vdae.parallel import runtime
from vdae.training import stages


def configs(only: str | None):
  c = digits.get_config()
  yield "digits 8x8x1", c
  c32 = digits.get_config()
  c32.data.source = "npz"
  c32.data.path = common.synthetic_npz((32, 32, 3))
  c32.model.channels = 64
  c32.model.channel_mults = (1, 2, 2)
  c32.model.num_res_blocks = 2
  c32.model.attn_resolutions = (8,)
  c32.stage1.batch_size = 32
  yield "32x32x3 (64ch, 3 levels, attn@8)", c32


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--only", choices=("digits", "32x32"), default=None)
  args = ap.parse_args()
  peak = common.matmul_peak_flops()
  print(
    f"backend {jax.default_backend()}, {jax.device_count()} device(s); "
    f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s"
  )
  print(
    f"{'config':36s} {'batch':>5s} {'steps/s':>8s} {'ex/s':>8s} {'GFLOP/s':>8s} "
    f"{'of peak':>8s} {'pipeline ex/s':>14s} {'pipe/step':>9s}"
  )
  for name, cfg in configs(args.only):
    if args.only and not name.startswith(args.only):
      continue
    with tempfile.TemporaryDirectory() as wd:
      t = stages.trainer("stage1", cfg, wd)
      compiled, state, spec, flops, it, batch = common.compiled_step(t)
      sec, _ = common.time_steps(compiled, state, spec.frozen, batch, args.repeats)
      consumed = spec.group.batch_size / sec
      delivered = common.pipeline_rate(it, spec.group.batch_size)
      print(
        f"{name:36s} {spec.group.batch_size:5d} {1 / sec:8.2f} {consumed:8.0f} "
        f"{flops / sec / 1e9:8.2f} {flops / sec / peak:8.1%} {delivered:14.0f} "
        f"{delivered / consumed:8.1f}x"
      )


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
