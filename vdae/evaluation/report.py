"""Markdown tables of evaluation metrics, models by metrics: one run's with its 95%
intervals (what --mode=evaluate prints) or several seeds' mean ± sd (vdae.evaluation.seeds).

Both read flat metrics.json keys (`<model>/<protocol>/<metric>`, `<model>/<metric>`,
`<model>/factors/<name>/r2|accuracy`, `<model>/dci/*`, `<model>/mig`); a table shows only
rows a run has, and the factor table only appears for data with factors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

PROTOCOL_METRICS = ("l2", "mse", "psnr", "class_accuracy", "recon_fid")
MODEL_METRICS = (
  "rate_nats",
  "linear_probe_accuracy",
  "sample_fid",
  "sample_fid_standard_normal",
  "neg_elbo_bits_per_dim",
)
DIGITS = {"l2": 3, "mse": 4, "psnr": 2, "class_accuracy": 3, "recon_fid": 2}
_DCI = ("disentanglement", "completeness", "informativeness")

# key, digits -> the cell's text, or None where the run(s) lack the key.
Cell = Callable[[str, int], str | None]


def _table(head: Sequence[str], rows) -> list[str]:
  """A markdown table of `(label, cells)` rows, keeping those with at least one value."""
  lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for label, cells in rows:
    if any(cells):
      lines.append(f"| {label} | " + " | ".join(c or "—" for c in cells) + " |")
  return lines


def tables(cell: Cell, keys: Sequence[str], models: Sequence[str], protocols: Sequence[str]):
  """Per-protocol metrics by model and protocol, per-model metrics, then (for data with
  factors, read from `keys`) each factor's probe score, DCI and MIG."""
  lines = _table(
    ["model / protocol", *PROTOCOL_METRICS],
    (
      (f"{m} / {p}", [cell(f"{m}/{p}/{k}", DIGITS[k]) for k in PROTOCOL_METRICS])
      for m in models
      for p in protocols
    ),
  )
  lines += [""] + _table(
    ["model", *MODEL_METRICS], ((m, [cell(f"{m}/{k}", 3) for k in MODEL_METRICS]) for m in models)
  )
  probes = sorted({k.split("/", 1)[1] for k in keys if k.split("/")[1:2] == ["factors"]})
  if probes:
    heads = [k.split("/")[1] + (" (acc.)" if k.endswith("accuracy") else "") for k in probes]
    cols = probes + [f"dci/{d}" for d in _DCI] + ["mig"]
    lines += [""] + _table(
      ["model", *heads, "D", "C", "I", "MIG"],
      ((m, [cell(f"{m}/{k}", 2) for k in cols]) for m in models),
    )
  return "\n".join(lines)


def _unconverged(share: float) -> str:
  return f"NaN: {100 * share:.0f}% of solves within eval.bpd_max_steps"


def run_tables(metrics: Mapping[str, float], models: Sequence[str], protocols: Sequence[str]):
  """One run's tables: each value with its 95% bootstrap interval where the run has one
  (`<key>_ci_low`, `<key>_ci_high`), then the judge's and the data's own figures."""

  def cell(key: str, digits: int) -> str | None:
    v = metrics.get(key)
    if v is not None and not np.isfinite(v) and metrics.get(f"{key}_converged", 1.0) < 1.0:
      return _unconverged(metrics[f"{key}_converged"])
    if v is None or not np.isfinite(v):
      return None
    lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    if lo is None or hi is None:
      return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

  out = [tables(cell, list(metrics), models, protocols), ""]
  for key, what in (
    ("classifier_test_accuracy", "the judge's accuracy on the test split"),
    ("fid_floor_train_vs_test", "FID of train against test images at the sample FID's size"),
    ("score_model/bits_per_dim", "the score model's likelihood, bits/dim"),
  ):
    if key in metrics:
      v = metrics[key]
      shown = f"{v:.3f}" if np.isfinite(v) else _unconverged(metrics.get(f"{key}_converged", 0.0))
      out.append(f"{what}: {shown}")
  out.append("[95% bootstrap interval]; every key is in eval/metrics.json")
  return "\n".join(out)
