"""Times what every process does once per network before its first step: the abstract
build (`nnx.eval_shape`, for the graph a step merges) and the trace of a jitted init, with
vdae's RNG streams (`network._rngs`: host-number draw counters) against flax's `nnx.Rngs`
(counters as arrays, whose traced updates make a build quadratic in its draws under JAX
0.10), alternating, on configs/cifar10.py's U-Net. Prints seconds and the ratio.

  python -m vdae.benchmarks.bench_build [--repeats 2] [--config cifar10|digits]
"""

from __future__ import annotations

import argparse
import importlib
import time

import jax
from flax import nnx

from vdae.io.timings import matmul_peak_flops
from vdae.models import network, unet

SHAPES = {"cifar10": (32, 32, 3), "digits": (8, 8, 1)}  # the data each config reads
STREAMS = {"nnx.Rngs": nnx.Rngs, "network._rngs": network._rngs}


def times(net: network.Network, shape: tuple[int, ...], rngs) -> tuple[float, float]:
  t = time.perf_counter()
  nnx.eval_shape(lambda: net.build(shape, rngs(params=0)))
  build = time.perf_counter() - t
  init = jax.jit(lambda k: nnx.to_pure_dict(nnx.state(net.build(shape, rngs(params=k)))))
  t = time.perf_counter()
  init.trace(jax.random.key(0))
  return build, time.perf_counter() - t


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--config", choices=tuple(SHAPES), default="cifar10")
  args = ap.parse_args()
  c = importlib.import_module(f"configs.{args.config}").get_config()
  net = unet.from_config(c.model, c.sde)
  shape = SHAPES[args.config]
  got: dict[str, list[tuple[float, float]]] = {name: [] for name in STREAMS}
  for _ in range(args.repeats):
    for name, rngs in STREAMS.items():
      got[name].append(times(net, shape, rngs))
  print(f"{args.config} U-Net {shape}, f32 matmul peak {matmul_peak_flops() / 1e9:.1f} GFLOP/s")
  for name, rows in got.items():
    builds = " / ".join(f"{b:.2f}" for b, _ in rows)
    inits = " / ".join(f"{i:.2f}" for _, i in rows)
    print(f"  {name:<14} abstract build {builds} s, traced init {inits} s")
  mean = lambda name, i: sum(r[i] for r in got[name]) / len(got[name])
  for i, what in enumerate(("abstract build", "traced init")):
    ratio = mean("nnx.Rngs", i) / mean("network._rngs", i)
    print(f"  {what}: nnx.Rngs / network._rngs = {ratio:.1f}x")


if __name__ == "__main__":
  main()
