"""Mean ± sd over seeds: the metrics.json of runs that differ only in their seed, side by side.

  python -m vdae.evaluation.seeds runs/s0 runs/s1 runs/s2 [--models vae,vdae] [--json OUT]

Prints one markdown table per metric family (rows: model / protocol; columns:
the metric's mean ± sample sd over the runs, n = number of runs that have it)
and writes the whole summary as JSON. Reads WORKDIR/eval/metrics.json of each.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence

import numpy as np

from vdae.evaluation import report
from vdae.io import files


def read(workdirs: Sequence[str]) -> list[dict[str, float]]:
  return [files.read_json(os.path.join(w, "eval", "metrics.json")) for w in workdirs]


def summarise(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
  """key -> {mean, sd, n, values} for every key that any run has (sd: ddof 1, 0 if n = 1)."""
  keys = sorted({k for r in runs for k in r})
  out = {}
  for k in keys:
    vals = np.array([r[k] for r in runs if k in r and np.isfinite(r[k])], np.float64)
    if len(vals):
      sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
      out[k] = {"mean": float(np.mean(vals)), "sd": sd, "n": len(vals), "values": vals.tolist()}
  return out


def tables(summary: dict, models: Sequence[str], protocols: Sequence[str]) -> str:
  """Markdown: per-protocol metrics by model and protocol, per-model metrics, factors."""

  def cell(key: str, digits: int) -> str | None:
    s = summary.get(key)
    return None if s is None else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"

  n = max((s["n"] for s in summary.values()), default=0)
  body = report.tables(cell, list(summary), models, protocols)
  return body + f"\n\nmean ± sd over n = {n} runs"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("workdirs", nargs="+")
  ap.add_argument("--models", default="vae,sdedit_vae,refined_vae,vdae")
  ap.add_argument("--protocols", default="sample,mode,mean,inverted")
  ap.add_argument("--json", default="")
  args = ap.parse_args()
  summary = summarise(read(args.workdirs))
  print(tables(summary, args.models.split(","), args.protocols.split(",")))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"workdirs": args.workdirs, "summary": summary}, f, indent=1)


if __name__ == "__main__":
  main()
