"""Expected wall times: a stage's from its first timed steps, --mode=all's lower bound, and
the warning a CPU run of an accelerator-sized config gets."""

import logging

import pytest

from vdae.training import eta, loop


@pytest.fixture(autouse=True)
def _no_plan():
  eta.clear_plan()
  yield
  eta.clear_plan()


def test_duration_uses_the_unit_a_reader_expects():
  assert [eta.duration(s) for s in (3, 252, 9000, 86400 * 30)] == [
    "3 s",
    "4.2 min",
    "2.5 h",
    "30 days",
  ]


def test_a_stage_expects_its_remaining_steps_at_the_timed_rate():
  (level, line), *rest = eta.estimate_lines("stage2", done=20, seconds=2.0, left=1480)
  assert level == logging.INFO and not rest
  assert (
    line == "stage2: 100 ms a step over its first 20 steps; about 2.5 min for the 1480 still to run"
  )


def test_mode_all_names_the_stages_not_yet_timed_and_skips_finished_ones():
  eta.plan_all({"stage1": 0, "stage2": 1500, "prior": 0, "vae": 1500, "refiner": 700})
  lines = [m for _, m in eta.estimate_lines("stage2", done=20, seconds=2.0, left=1480)]
  assert "at least 2.5 min more" in lines[1]
  assert "not yet timed: vae (1500 steps), refiner (700 steps), then pictures" in lines[1]
  eta.plan_all({"stage1": 10, "refiner": 500})
  last = eta.estimate_lines("refiner", done=20, seconds=2.0, left=480)[1][1]
  assert "not yet timed" not in last


def test_a_cpu_run_of_days_is_warned_about_naming_the_cpu_configs():
  # the backend here is the CPU: 1.3M stage-1 steps at 1 s each
  lines = eta.estimate_lines("stage1", done=20, seconds=20.0, left=1_300_000)
  level, warning = lines[-1]
  assert level == logging.WARNING and "15 days" in warning
  assert "configs/digits.py" in warning and "--config.stage1.num_steps" in warning
  short = eta.estimate_lines("stage1", done=20, seconds=2.0, left=1480)
  assert all(level == logging.INFO for level, _ in short)


def test_the_hook_reads_the_rate_once_after_its_first_steps(caplog):
  now = [0.0]
  hook = loop.EtaHook("vae", start=100, num_steps=1000, clock=lambda: now[0])
  with caplog.at_level(logging.INFO, logger="vdae.training.loop"):
    for step in range(101, 200):
      now[0] = (step - 100) * 0.05
      hook.after_step(step, None, {}, last=False)
  said = [r.getMessage() for r in caplog.records]
  assert said == ["vae: 50 ms a step over its first 20 steps; about 44 s for the 880 still to run"]
  # a resumed stage with too few steps left to time says nothing
  quiet = loop.EtaHook("vae", start=998, num_steps=1000, clock=lambda: 1.0)
  assert quiet.at is None
