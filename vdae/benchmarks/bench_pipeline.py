"""Where the main command's time goes, in one run: every stage's step against the
machine's peak, the loop's overhead against the bare step, compile time with a cold
and a warm persistent cache, and (--main) the whole --mode=all per phase.

  python -m vdae.benchmarks.bench_pipeline [--config=configs/digits.py] [--steps 200]
      [--repeats 20] [--main] [--json OUT]

For each stage of the stage table, in its order (each trains --steps steps in one
temporary workdir, so the next stage has what it reads):
  bare     the compiled step alone, timed on one batch (median of --repeats, each
           blocked on);
  piped    the same step dispatched back to back (as many as the loop runs), blocked on
           once, as the loop dispatches it: measured just before and just after the
           loop, and their mean is the baseline;
  loop     Trainer.train's seconds per step after the compile: data, hooks, host
           syncs and all (the stage's own log_every; image_every and
           checkpoints off but for the final save);
  overhead loop / piped - 1: what the loop adds to the steps it runs;
  noise    |piped after - piped before| / piped: the step's own drift over the loop,
           the size of an overhead this run cannot tell from zero.
FLOP/s is XLA's cost analysis of the step x the measured rate. Compile seconds are
the stage-1 step's, in a fresh process against an empty cache (cold) and again
(warm). Every figure is printed beside the measured f32 matmul peak; compare
figures as ratios within one run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import jax

from vdae.benchmarks import common
from vdae.io import pretrained
from vdae.parallel import runtime
from vdae.training import stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(path: str):
  """configs/<name>.py's config (an imported score model's SDE resolved)."""
  name = os.path.splitext(os.path.relpath(os.path.abspath(path), ROOT))[0].replace(os.sep, ".")
  cfg = importlib.import_module(name).get_config()
  pretrained.resolve_config(cfg)
  return cfg


def stage_figures(cfg, workdir: str, steps: int, repeats: int, peak: float) -> list[dict]:
  rows = []
  for name in stages.STAGES:
    if stages.STAGES[name].imported(cfg):
      continue
    c = cfg.copy_and_resolve_references()
    group = c[name]
    group.num_steps, group.image_every, group.checkpoint_every = steps, 0, steps
    t = stages.trainer(name, c, workdir)
    compiled, state, spec, flops, _, batch = common.compiled_step(t)
    bare, state = common.time_steps(compiled, state, spec.frozen, batch, repeats)
    # As many pipelined steps as the loop runs, just before and just after it: the
    # step's own rate drifts 10-20% over a minute on a shared VM, and two short
    # samples read as a loop overhead that is not there (the VAE's "+22%" of 12-03).
    before, state = common.time_steps_pipelined(compiled, state, spec.frozen, batch, steps)
    del state
    state = t.train()  # the real loop; leaves the checkpoint the next stage reads
    loop = t.stats["loop_seconds"] / t.stats["steps"]
    after, state = common.time_steps_pipelined(compiled, state, spec.frozen, batch, steps)
    del compiled, state
    piped = (before + after) / 2
    rows.append(
      {
        "stage": name,
        "batch": spec.group.batch_size,
        "bare_step_s": bare,
        "pipelined_step_s": piped,
        "loop_step_s": loop,
        "pipelined_before_after_s": [before, after],
        "loop_overhead": loop / piped - 1,
        "noise": abs(after - before) / piped,  # the step's own drift across the loop
        "gflops_per_step": flops / 1e9,
        "fraction_of_peak": flops / bare / peak,
        "compile_s_in_process": t.stats["compile_seconds"],
      }
    )
    r = rows[-1]
    print(
      f"{name:8s} {r['batch']:5d} {bare * 1e3:9.2f} {piped * 1e3:9.2f} {loop * 1e3:9.2f} "
      f"{r['loop_overhead']:9.1%} {r['noise']:6.1%} "
      f"{flops / bare / 1e9:9.1f} {r['fraction_of_peak']:8.1%}",
      flush=True,
    )
  return rows


def compile_seconds(config: str, cache: str, workdir: str) -> float:
  """The stage-1 step's compile seconds in a fresh process using `cache`."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, PYTHONPATH=ROOT)
  env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
  argv = [sys.executable, "-m", "vdae.main", f"--config={config}", f"--workdir={workdir}"]
  argv += ["--mode=pretrain", "--config.stage1.num_steps=1", "--config.stage1.image_every=0"]
  out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
  m = re.search(r"stage1: train step compiled in ([0-9.]+) s", out.stderr + out.stdout)
  if out.returncode or not m:
    raise RuntimeError(f"pretrain failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
  return float(m.group(1))


def main_command(config: str, workdir: str) -> dict:
  """--mode=all in a fresh process (the user's cache, as they would run it): timings.json."""
  argv = [sys.executable, "-m", "vdae.main", f"--config={config}", f"--workdir={workdir}"]
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run(argv + ["--mode=all"], env=env, check=True, timeout=7200, cwd=ROOT)
  with open(os.path.join(workdir, "timings.json")) as f:
    return json.load(f)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default="configs/digits.py")
  ap.add_argument("--steps", type=int, default=200)
  ap.add_argument("--repeats", type=int, default=20)
  ap.add_argument("--main", action="store_true", help="also time --mode=all (minutes)")
  ap.add_argument("--json", default="", help="write the figures here as JSON")
  args = ap.parse_args()
  cfg = load_config(args.config)
  peak = common.matmul_peak_flops()
  print(
    f"backend {jax.default_backend()}, {jax.device_count()} device(s); "
    f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s"
  )
  print(
    f"{'stage':8s} {'batch':>5s} {'bare ms':>9s} {'piped ms':>9s} {'loop ms':>9s} {'overhead':>9s} "
    f"{'noise':>6s} {'GFLOP/s':>9s} {'of peak':>8s}"
  )
  out: dict = {"matmul_peak_gflops": peak / 1e9, "config": args.config}
  with tempfile.TemporaryDirectory() as d:
    out["stages"] = stage_figures(cfg, os.path.join(d, "wd"), args.steps, args.repeats, peak)
    cache = os.path.join(d, "cache")
    cold = compile_seconds(args.config, cache, os.path.join(d, "c1"))
    warm = compile_seconds(args.config, cache, os.path.join(d, "c2"))
    out["stage1_compile_s"] = {"cold": cold, "warm": warm}
    print(f"stage-1 step compile: cold cache {cold:.1f} s, warm cache {warm:.2f} s")
    if args.main:
      out["main_command"] = main_command(args.config, os.path.join(d, "main"))
      t = out["main_command"]
      for k, v in t["seconds"].items():
        print(f"  --mode=all {k:10s} {v:8.1f} s")
      print(
        f"  --mode=all total {t['total_seconds'] / 60:.1f} min at "
        f"{t['matmul_peak_gflops']:.1f} GFLOP/s"
      )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
