"""What an evaluation costs and how fast it answers a SIGTERM, on the smoke run a new user
tries first: every stage at a few steps (`--steps`, 20) on configs/shapes.py, then
`--mode=evaluate` as a child process. Prints the machine's f32 matmul peak, each model's
evaluation time and its likelihood solve (from the evaluation's own log lines), then, with
--sigterm, the seconds from a SIGTERM sent inside the VDAE's -ELBO solve to the exit and
what the rerun costs (only the missing parts are computed).

  python -m vdae.benchmarks.bench_eval --workdir /tmp/smoke [--steps 20] [--sigterm]
      [--config configs/shapes.py] [--json out.json]

A workdir that already has its checkpoints is evaluated as it is (delete its eval/ to
time the whole evaluation again).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from vdae.io.timings import matmul_peak_flops

STAGE_MODES = ("pretrain", "train_encoder", "train_prior", "train_vae", "train_refiner")
STAGE_GROUPS = ("stage1", "stage2", "prior", "vae", "refiner")
TOOK = re.compile(r"evaluate: (\S+) took ([0-9.]+) s")
SOLVED = re.compile(
  r"(\S+/(?:neg_elbo_bits_per_dim|bits_per_dim)): (\d+)/(\d+) batches in .*?"
  r"\((\d+) solver steps(, did not converge)?\)"
)
SOLVING = "vdae/neg_elbo_bits_per_dim: batch 0 at t"


def smoke_flags(config: str, steps: int) -> list[str]:
  flags = [f"--config={config}", "--config.eval.num_test=64"]
  return flags + [f"--config.{g}.num_steps={steps}" for g in STAGE_GROUPS]


def parse(log: str) -> dict:
  """{"seconds": {part: s}, "solves": {what: {"steps", "converged"}}} from an evaluation's log."""
  seconds = {m.group(1): float(m.group(2)) for m in TOOK.finditer(log)}
  solves = {
    m.group(1): {"steps": int(m.group(4)), "converged": m.group(5) is None}
    for m in SOLVED.finditer(log)
  }
  return {"seconds": seconds, "solves": solves}


def _evaluate(flags, workdir, log_path, sigterm: bool = False) -> dict:
  argv = [
    sys.executable,
    "-u",
    "-m",
    "vdae.main",
    *flags,
    f"--workdir={workdir}",
    "--mode=evaluate",
  ]
  t0 = time.perf_counter()
  with open(log_path, "wb") as f:
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    latency = None
    if sigterm:
      while p.poll() is None and SOLVING not in open(log_path, errors="replace").read():
        time.sleep(0.1)
      t_sig = time.perf_counter()
      p.send_signal(signal.SIGTERM)
      p.wait(timeout=600)
      latency = time.perf_counter() - t_sig
    rc = p.wait(timeout=24 * 3600)
  out = {"exit": rc, "wall_s": time.perf_counter() - t0, **parse(open(log_path).read())}
  if latency is not None:
    out["sigterm_to_exit_s"] = latency
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--config", default="configs/shapes.py")
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--sigterm", action="store_true")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  flags = smoke_flags(args.config, args.steps)
  os.makedirs(args.workdir, exist_ok=True)
  for mode in STAGE_MODES:
    argv = [
      sys.executable,
      "-m",
      "vdae.main",
      *flags,
      f"--workdir={args.workdir}",
      f"--mode={mode}",
    ]
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  peak = matmul_peak_flops() / 1e9
  report = {"config": args.config, "steps": args.steps, "peak_gflops": peak}
  report["evaluate"] = _evaluate(flags, args.workdir, os.path.join(args.workdir, "bench_eval.log"))
  if args.sigterm:
    shutil.rmtree(os.path.join(args.workdir, "eval"), ignore_errors=True)
    log = os.path.join(args.workdir, "bench_eval_sigterm.log")
    report["sigterm"] = _evaluate(flags, args.workdir, log, sigterm=True)
    report["rerun"] = _evaluate(
      flags, args.workdir, os.path.join(args.workdir, "bench_eval_rerun.log")
    )
  print(f"{args.config}, every stage at {args.steps} steps; f32 matmul peak {peak:.1f} GFLOP/s")
  for name, rec in (("evaluate", report["evaluate"]), ("rerun after SIGTERM", report.get("rerun"))):
    if rec is None:
      continue
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in rec["seconds"].items())
    print(f"  {name}: {rec['wall_s']:.1f} s in all (exit {rec['exit']}); {parts}")
    for what, s in rec["solves"].items():
      print(f"    {what}: {s['steps']} solver steps, converged: {s['converged']}")
  if "sigterm" in report:
    s = report["sigterm"]
    print(
      f"  SIGTERM inside the -ELBO solve: exit {s['exit']} after {s['sigterm_to_exit_s']:.1f} s"
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
