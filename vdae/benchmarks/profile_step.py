"""Where a train step's time goes: a jax.profiler trace of a few steps of each stage,
reduced to its top XLA ops and op kinds.

  python -m vdae.benchmarks.profile_step [--config=configs/digits.py] [--stages stage1,stage2]
      [--steps 10] [--top 5] [--json OUT]

Each stage of the stage table (in order, so that the next has what it reads) trains
3 + --steps steps in one temporary workdir with loop.profile_steps=(3, 3 + steps);
the trace (`*.trace.json.gz`, as TensorBoard's profile plugin writes it) is read
back and the device-side events of the train step's program (its XLA thunks,
which carry `hlo_op`) are summed per op and per op kind (the op name without its
number: `convolution`, `fusion`, `copy`, `ynn_fusion` = a YNNPACK dot/conv
fusion on CPU, ...). Shares are of the step program's summed op time, which on a
multi-threaded CPU can exceed wall time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile

from vdae.benchmarks import bench_pipeline, common
from vdae.parallel import runtime
from vdae.training import stages


def newest_trace(logdir: str) -> str:
  paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.trace.json.gz"))
  if not paths:
    raise FileNotFoundError(f"no *.trace.json.gz under {logdir}/plugins/profile")
  return max(paths, key=os.path.getmtime)


def op_times(trace_path: str) -> dict[str, dict[str, float]]:
  """hlo_module -> {hlo_op: summed microseconds} over the trace's XLA thunk events."""
  with gzip.open(trace_path, "rt") as f:
    events = json.load(f)["traceEvents"]
  out: dict[str, dict[str, float]] = collections.defaultdict(lambda: collections.defaultdict(float))
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") == "X" and "hlo_op" in args:
      out[args.get("hlo_module", "?")][args["hlo_op"]] += float(e["dur"])
  return out


def kind(op: str) -> str:
  return re.sub(r"\.\d+$", "", op)


def op_sources(hlo_text: str) -> dict[str, str]:
  """hlo_op -> the JAX source op it came from (metadata op_name, its last 3 parts)."""
  out = {}
  for m in re.finditer(r"%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"", hlo_text):
    out[m.group(1)] = "/".join(m.group(2).split("/")[-3:])
  return out


def summarise(trace_path: str, top: int, sources: dict[str, str] | None = None) -> dict:
  """The train step's program (the module with the most op time): its top ops (with
  the JAX op each came from, where `sources` knows it) and op kinds."""
  mods = op_times(trace_path)
  module = max(mods, key=lambda m: sum(mods[m].values()))
  ops = mods[module]
  total = sum(ops.values())
  kinds: dict[str, float] = collections.defaultdict(float)
  for op, us in ops.items():
    kinds[kind(op)] += us
  rank = lambda d: sorted(d.items(), key=lambda kv: -kv[1])[:top]
  return {
    "module": module,
    "op_ms": total / 1e3,
    "top_ops": [(op, us / 1e3, us / total, (sources or {}).get(op, "")) for op, us in rank(ops)],
    "top_kinds": [(k, us / 1e3, us / total) for k, us in rank(kinds)],
  }


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/digits.py")
  ap.add_argument("--stages", default="stage1,stage2,prior,vae,refiner")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--top", type=int, default=5)
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  cfg = bench_pipeline.load_config(args.config)
  peak = common.matmul_peak_flops()
  print(f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  wanted = args.stages.split(",")
  out = {"matmul_peak_gflops": peak / 1e9, "config": args.config, "stages": {}}
  with tempfile.TemporaryDirectory() as wd:
    for name in stages.STAGES:
      if stages.STAGES[name].imported(cfg):
        continue
      c = cfg.copy_and_resolve_references()
      g = c[name]
      g.num_steps, g.image_every, g.checkpoint_every = 3 + args.steps, 0, 3 + args.steps
      c.loop.profile_steps = (3, 3 + args.steps) if name in wanted else ()
      stages.train(name, c, wd)
      if name not in wanted:
        continue
      # The same program again (from the persistent cache), for its ops' source names.
      compiled = common.compiled_step(stages.trainer(name, c, wd))[0]
      sources = op_sources(compiled.as_text())
      s = summarise(newest_trace(os.path.join(wd, "tensorboard", name)), args.top, sources)
      s["op_ms_per_step"] = s["op_ms"] / args.steps
      out["stages"][name] = s
      print(f"\n{name}: {s['op_ms_per_step']:.1f} ms of XLA op time a step ({s['module']})")
      for label, ms, share in s["top_kinds"]:
        print(f"  op kind {label:28s} {ms / args.steps:8.2f} ms/step {share:7.1%}")
      for label, ms, share, src in s["top_ops"]:
        print(f"  op      {label:28s} {ms / args.steps:8.2f} ms/step {share:7.1%}  {src}")
      if not set(wanted) - set(out["stages"]):
        break
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
