"""The stage-2 train step on an imported google/ddpm-cifar10-32 architecture (35.7M
parameters, random weights), 32x32x3, at several batch sizes and compute dtypes.

Prints the machine's measured f32 matmul peak, then per (batch, dtype): step
time, examples/s, achieved FLOP/s (XLA's cost analysis x the measured rate)
and its fraction of the peak. The encoder is configs/cifar10_ddpm.py's; the
frozen score model is the imported UNet2DModel written to a temporary
diffusers directory (no download), read back through vdae/io/pretrained.py
exactly as a real checkpoint would be.

  python -m vdae.benchmarks.bench_imported [--batches 32,128] [--dtypes float32,bfloat16]
      [--repeats 3]

On a 2-core CPU one batch-128 f32 step takes minutes; --batches 32 --dtypes float32
is the quick figure. On a GPU the same command reports the step's MFU against
the measured peak (bf16 peaks are higher than the f32 matmul peak printed).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import jax

from configs import cifar10_ddpm
from vdae.benchmarks import common
from vdae.io import pretrained
from vdae.models import diffusers_unet
from vdae.parallel import runtime
from vdae.training import stages

# google/ddpm-cifar10-32's UNet (its config.json, as committed in the fixtures).
CIFAR10_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
  "tests",
  "fixtures",
  "diffusers",
  "ddpm_cifar10_32",
)


def random_checkpoint(directory: str, **changes) -> str:
  """A diffusers directory with the cifar10-32 architecture (config.json fields
  `changes` replaced) and random weights."""
  with open(os.path.join(CIFAR10_CONFIG, "config.json")) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(os.path.join(CIFAR10_CONFIG, "scheduler_config.json")) as f:
    sched = json.load(f)
  spec = diffusers_unet.UNetSpec.from_json(cfg, "config.json")
  shape = (spec.sample_size, spec.sample_size, spec.in_channels)
  tree = jax.jit(lambda k: diffusers_unet.network_of(spec).init(k, shape))(jax.random.key(0))
  pretrained.write_checkpoint(directory, cfg, tree, sched)
  return directory


def config(path: str, batch: int, dtype: str):
  c = cifar10_ddpm.get_config()
  c.model.path = path
  c.model.dtype = dtype
  c.data.source = "npz"
  c.data.path = common.synthetic_npz((32, 32, 3), n=max(256, 2 * batch))
  c.data.random_flip = False
  c.stage2.batch_size = batch
  pretrained.resolve_config(c)
  return c


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batches", default="32,128")
  ap.add_argument("--dtypes", default="float32,bfloat16")
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  peak = common.matmul_peak_flops()
  print(
    f"backend {jax.default_backend()}, {jax.device_count()} device(s); "
    f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s"
  )
  print(f"{'batch':>5s} {'dtype':>9s} {'step s':>8s} {'ex/s':>8s} {'GFLOP/s':>9s} {'of peak':>8s}")
  with tempfile.TemporaryDirectory() as d:
    path = random_checkpoint(os.path.join(d, "ddpm"))
    for batch in (int(b) for b in args.batches.split(",")):
      for dtype in args.dtypes.split(","):
        cfg = config(path, batch, dtype)
        t = stages.trainer("stage2", cfg, os.path.join(d, f"wd_{batch}_{dtype}"))
        compiled, state, spec, flops, _, b = common.compiled_step(t)
        sec, _ = common.time_steps(compiled, state, spec.frozen, b, args.repeats)
        rate = flops / sec
        print(
          f"{batch:5d} {dtype:>9s} {sec:8.3f} {batch / sec:8.1f} {rate / 1e9:9.1f} "
          f"{rate / peak:7.1%}",
          flush=True,
        )


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
