"""Mean ± sd over seeds from each run's metrics.json."""

import json
import os

import numpy as np
import pytest

from vdae.evaluation import seeds


def _run(tmp_path, name, metrics):
  os.makedirs(tmp_path / name / "eval")
  with open(tmp_path / name / "eval" / "metrics.json", "w") as f:
    json.dump(metrics, f)
  return str(tmp_path / name)


def test_mean_and_sample_sd_per_key_and_missing_keys_counted(tmp_path):
  dirs = [
    _run(tmp_path, "a", {"vae/mean/l2": 1.0, "vdae/rate_nats": 60.0}),
    _run(tmp_path, "b", {"vae/mean/l2": 2.0, "vdae/rate_nats": float("nan")}),
    _run(tmp_path, "c", {"vae/mean/l2": 4.0}),
  ]
  s = seeds.summarise(seeds.read(dirs))
  assert s["vae/mean/l2"]["mean"] == pytest.approx(7 / 3)
  assert s["vae/mean/l2"]["sd"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
  assert s["vdae/rate_nats"] == {"mean": 60.0, "sd": 0.0, "n": 1, "values": [60.0]}
  table = seeds.tables(s, ["vae", "vdae"], ["mean"])
  assert "| vae / mean | 2.333 ± 1.528 |" in table
  assert "| vdae | 60.000 ± 0.000 |" in table


def test_factor_scores_get_their_own_table_only_where_the_data_have_factors(tmp_path):
  factors = {"vdae/factors/x/r2": 0.9, "vdae/factors/shape/accuracy": 0.5, "vdae/mig": 0.1}
  factors |= {f"vdae/dci/{d}": 0.2 for d in ("disentanglement", "completeness", "informativeness")}
  dirs = [_run(tmp_path, "a", factors), _run(tmp_path, "b", {**factors, "vdae/mig": 0.3})]
  table = seeds.tables(seeds.summarise(seeds.read(dirs)), ["vae", "vdae"], ["mean"])
  assert "| model | shape (acc.) | x | D | C | I | MIG |" in table
  assert (
    "| vdae | 0.50 ± 0.00 | 0.90 ± 0.00 | 0.20 ± 0.00 | 0.20 ± 0.00 | 0.20 ± 0.00 | 0.20 ± 0.14 |"
    in table
  )
  plain = seeds.tables(seeds.summarise([{"vae/mean/l2": 1.0}]), ["vae"], ["mean"])
  assert "MIG" not in plain
