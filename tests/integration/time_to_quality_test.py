"""The time-to-quality benchmark scores every kept checkpoint of a stage at its own wall time."""

import math

import numpy as np
import pytest

from vdae.benchmarks import time_to_quality as ttq
from vdae.io.errors import CheckpointError
from vdae.parallel import sharding
from vdae.training import stages


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_checkpoint_is_scored_at_its_wall_time(tmp_path, mini_config):
  cfg, wd = mini_config, str(tmp_path)
  rows, judged = ttq.measure(cfg, wd, "stage1", every=2)
  assert [r["step"] for r in rows] == [2, 4, 6]
  walls = [r["wall_seconds"] for r in rows]
  assert walls[0] > 0 and np.all(np.diff(walls) > 0)
  assert all(math.isfinite(r["sample_fid"]) and r["sample_fid"] >= 0 for r in rows)
  assert rows[0]["sample_fid"] != rows[-1]["sample_fid"]  # other parameters, other samples
  assert "fid_floor_train_vs_test" in judged

  rows, _ = ttq.measure(cfg, wd, "stage2", every=2)
  assert [r["step"] for r in rows] == [2, 4]
  assert all(0 <= r["class_accuracy"] <= 1 and r["l2"] > 0 for r in rows)
  assert rows[0]["l2"] != rows[1]["l2"]

  rows, _ = ttq.measure(cfg, wd, "prior", every=2)
  assert [r["step"] for r in rows] == [2, 4]
  assert all(math.isfinite(r["sample_fid"]) for r in rows)
  assert rows[0]["sample_fid"] != rows[1]["sample_fid"]  # other prior, other codes

  stages.train("vae", cfg, wd)
  rows, _ = ttq.measure(cfg, wd, "refiner", every=2)
  assert [r["step"] for r in rows] == [2, 4]
  assert all(0 <= r["class_accuracy"] <= 1 and r["l2"] > 0 for r in rows)
  assert rows[0]["l2"] != rows[1]["l2"]

  # A step that was not kept is named.
  mesh = sharding.make_mesh(cfg.mesh)
  with pytest.raises(CheckpointError, match="no stage-1 checkpoint of step 3"):
    stages.load_stage("stage1", cfg, wd, mesh, (8, 8, 1), step=3)


def test_every_must_fall_on_logged_steps(tmp_path, tiny_config):
  with pytest.raises(ValueError, match="multiple of stage1.log_every"):
    ttq.measure(tiny_config, str(tmp_path), "stage1", every=3)


def test_overrides_are_checked_like_command_line_ones(tiny_config):
  from vdae.io.errors import ConfigError

  ttq.apply_overrides(tiny_config, ["stage1.batch_size=8"])
  assert tiny_config.stage1.batch_size == 8
  with pytest.raises(ConfigError, match="stage1.batch_sise"):
    ttq.apply_overrides(tiny_config, ["stage1.batch_sise=8"])
  with pytest.raises(ConfigError, match="sampling.method"):
    ttq.apply_overrides(tiny_config, ["sampling.method=rk4"])


def test_a_resumed_run_is_refused_not_timed(tmp_path):
  from vdae.io import writer

  w = writer.Writer(str(tmp_path / "tensorboard" / "stage1"))
  for step, secs in ((2, 1.0), (4, 2.0), (6, 0.5)):  # the clock restarts at step 6
    w.scalars(step, {"perf/loop_seconds": secs})
  w.close()
  with pytest.raises(SystemExit, match="more than one run"):
    ttq.wall_seconds(str(tmp_path), "stage1")
