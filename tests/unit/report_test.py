"""The table --mode=evaluate prints: models by metrics, each value with its interval."""

from vdae.evaluation import report

METRICS = {
  "vae/mean/l2": 0.97,
  "vae/mean/l2_ci_low": 0.96,
  "vae/mean/l2_ci_high": 0.99,
  "vae/mean/recon_fid": 0.54,
  "vae/rate_nats": 56.0,
  "vae/sample_fid": 12.7,
  "vae/sample_fid_ci_low": 9.1,
  "vae/sample_fid_ci_high": 17.0,
  "vdae/sample/l2": 3.15,
  "vdae/sample/class_accuracy": float("nan"),
  "vdae/rate_nats": 60.0,
  "classifier_test_accuracy": 0.994,
}


def test_values_carry_their_intervals_and_missing_cells_are_dashes():
  t = report.run_tables(METRICS, ["vae", "sdedit_vae", "vdae"], ["sample", "mean"])
  assert "| vae / mean | 0.970 [0.960, 0.990] | — | — | — | 0.54 |" in t
  # a NaN is no value; a model or protocol without keys gets no row
  assert "| vdae / sample | 3.150 | — | — | — | — |" in t
  assert "vae / sample" not in t and "sdedit_vae" not in t
  assert "| vae | 56.000 | — | 12.700 [9.100, 17.000] | — | — |" in t
  assert "the judge's accuracy on the test split: 0.994" in t
  assert "MIG" not in t  # no factors, no factor table


def test_factor_table_only_for_data_with_factors():
  f = dict(METRICS, **{"vdae/factors/hue/r2": 0.01, "vdae/factors/shape/accuracy": 0.42})
  f |= {"vdae/mig": 0.05, "vdae/dci/disentanglement": 0.11}
  t = report.run_tables(f, ["vae", "vdae"], ["sample", "mean"])
  assert "| model | hue | shape (acc.) | D | C | I | MIG |" in t
  assert "| vdae | 0.01 | 0.42 | 0.11 | — | — | 0.05 |" in t


def test_an_unconverged_likelihood_says_so_instead_of_a_dash():
  m = dict(METRICS, **{"vdae/neg_elbo_bits_per_dim": float("nan")})
  m |= {"vdae/neg_elbo_bits_per_dim_converged": 0.5, "vae/neg_elbo_bits_per_dim": 5.49}
  m |= {"score_model/bits_per_dim": float("nan"), "score_model/bits_per_dim_converged": 0.0}
  t = report.run_tables(m, ["vae", "vdae"], ["sample", "mean"])
  assert "| vdae | 60.000 | — | — | — | NaN: 50% of solves within eval.bpd_max_steps |" in t
  assert "| vae | 56.000 | — | 12.700 [9.100, 17.000] | — | 5.490 |" in t
  assert "the score model's likelihood, bits/dim: NaN: 0% of solves within" in t
