"""The sweep's bookkeeping: which points count as matched in rate, and the table."""

import os

import pytest

from vdae.commands import sweep

pytestmark = pytest.mark.timeout(30)


def _p(model, beta, rate, seed=0):
  return {"model": model, "beta": beta, "seed": seed, "rate_nats": rate, "mode/l2": 1.0}


def test_points_match_only_within_the_tolerance_and_the_same_seed():
  pts = [_p("vdae", 0.1, 21.0), _p("vdae", 1.0, 5.0), _p("vae", 1.0, 20.0), _p("vae", 3.0, 19.0, 1)]
  pairs = sweep.matched_pairs(pts, 0.1)
  assert [(a["beta"], b["beta"]) for a, b in pairs] == [(0.1, 1.0)]  # 5% apart; 75% is not
  assert sweep.matched_pairs(pts, 0.01) == []
  text = sweep.table(pts, ("mode",), 0.1)
  assert "vdae beta 0.1 (21.0 nats) vs vae beta 1 (20.0 nats)" in text
  assert text.count("\n| vdae") == 2 and "| nan |" in text  # missing metrics show as nan


def test_point_config_sets_beta_seed_and_the_shared_score_model(tiny_config, tmp_path):
  cfg = sweep.point_config(tiny_config, str(tmp_path), "vae", 2.0, 3)
  assert cfg.vae.beta_kl == 2.0 and cfg.seed == 3 and cfg.stage2.stage1_workdir == str(tmp_path)
  assert tiny_config.vae.beta_kl != 2.0  # the run's own config is untouched
  assert sweep.point_dir("/w", "vdae", 0.3, 1) == "/w/sweep/vdae_beta0.3_seed1"
  # SDEdit and the refiner decode the VAE's code: its beta, its directory.
  cfg = sweep.point_config(tiny_config, str(tmp_path), "refined_vae", 2.0, 3)
  assert cfg.vae.beta_kl == 2.0 and cfg.stage2.beta_kl == tiny_config.stage2.beta_kl
  assert sweep.point_dir("/w", "sdedit_vae", 0.3, 1) == "/w/sweep/vae_beta0.3_seed1"
  assert sweep._stages_to_train("refined_vae") == ["vae", "refiner"]


def test_the_factor_figure_is_drawn_only_for_data_with_factors(tmp_path):
  pts = [_p("vdae", 0.1, 21.0) | {"factors/hue/r2": 0.2, "mig": 0.1}, _p("vae", 1.0, 20.0)]
  pts += [_p("sdedit_vae", 1.0, 20.0) | {"factors/hue/r2": 0.5}]
  path = sweep.plot_factors(pts, str(tmp_path / "f.png"))
  assert path and os.path.getsize(path) > 0
  assert sweep.plot_factors([_p("vdae", 0.1, 21.0)], str(tmp_path / "g.png")) is None
  assert not os.path.exists(tmp_path / "g.png")
