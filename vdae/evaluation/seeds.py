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

from vdae.io import files

PROTOCOL_METRICS = ("l2", "mse", "psnr", "class_accuracy", "recon_fid")
MODEL_METRICS = (
  "rate_nats",
  "linear_probe_accuracy",
  "sample_fid",
  "sample_fid_standard_normal",
  "neg_elbo_bits_per_dim",
)


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


def _cell(s: dict | None, digits: int) -> str:
  return "—" if s is None else f"{s['mean']:.{digits}f} ± {s['sd']:.{digits}f}"


def tables(summary: dict, models: Sequence[str], protocols: Sequence[str]) -> str:
  """Markdown: per-protocol metrics by model and protocol, then per-model metrics."""
  digits = {"l2": 3, "mse": 4, "psnr": 2, "class_accuracy": 3, "recon_fid": 2}
  lines = ["| model / protocol | " + " | ".join(PROTOCOL_METRICS) + " |"]
  lines.append("|---" * (len(PROTOCOL_METRICS) + 1) + "|")
  for m in models:
    for p in protocols:
      cells = [summary.get(f"{m}/{p}/{k}") for k in PROTOCOL_METRICS]
      if any(cells):
        row = [_cell(c, digits[k]) for c, k in zip(cells, PROTOCOL_METRICS, strict=True)]
        lines.append(f"| {m} / {p} | " + " | ".join(row) + " |")
  lines += ["", "| model | " + " | ".join(MODEL_METRICS) + " |"]
  lines.append("|---" * (len(MODEL_METRICS) + 1) + "|")
  for m in models:
    cells = [summary.get(f"{m}/{k}") for k in MODEL_METRICS]
    if any(cells):
      lines.append(f"| {m} | " + " | ".join(_cell(c, 3) for c in cells) + " |")
  lines += _factor_table(summary, models)
  n = max((s["n"] for s in summary.values()), default=0)
  lines += ["", f"mean ± sd over n = {n} runs"]
  return "\n".join(lines)


def _factor_table(summary: dict, models: Sequence[str]) -> list[str]:
  """Per-factor probe scores (R², or accuracy for categorical factors), DCI and MIG, for
  data with factors (vdae/evaluation/factors.py): nothing for data without."""
  probes = sorted({k.split("/", 1)[1] for k in summary if k.split("/")[1:2] == ["factors"]})
  names = [k.split("/")[1] + (" (acc.)" if k.endswith("accuracy") else "") for k in probes]
  if not probes:
    return []
  cols = probes + [f"dci/{d}" for d in ("disentanglement", "completeness", "informativeness")]
  cols.append("mig")
  heads = names + ["D", "C", "I", "MIG"]
  lines = ["", "| model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
  for m in models:
    cells = [summary.get(f"{m}/{k}") for k in cols]
    if any(cells):
      lines.append(f"| {m} | " + " | ".join(_cell(c, 2) for c in cells) + " |")
  return lines


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
