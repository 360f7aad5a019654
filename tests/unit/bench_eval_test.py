"""vdae/benchmarks/bench_eval.py reads the evaluation's own log lines: parsed here from
lines the product's formatters write, so a changed line shows here, not as an empty
benchmark."""

import logging

import pytest

from vdae.benchmarks import bench_eval
from vdae.evaluation import harness
from vdae.training import eta

pytestmark = pytest.mark.timeout(60)


def test_bench_eval_reads_each_parts_time_and_each_solve(caplog):
  with caplog.at_level(logging.INFO):
    with harness.Timer("vae"):
      pass
    eta.Countdown("vdae/neg_elbo_bits_per_dim", 1, "batches").update(1, "40 solver steps")
    solve = eta.Countdown("score_model/bits_per_dim", 2, "batches")
    solve.update(2, "2000 solver steps, did not converge")
  log = "\n".join(f"I1207 12:00:00.0 1 x.py:1] {r.getMessage()}" for r in caplog.records)
  got = bench_eval.parse(log)
  assert set(got["seconds"]) == {"vae"} and got["seconds"]["vae"] >= 0
  assert got["solves"] == {
    "vdae/neg_elbo_bits_per_dim": {"steps": 40, "converged": True},
    "score_model/bits_per_dim": {"steps": 2000, "converged": False},
  }
