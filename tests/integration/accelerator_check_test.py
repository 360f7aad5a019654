"""The accelerator check in its dry mode (CPU): every section runs the code a GPU or TPU
host would run, at CPU sizes, so the check cannot rot before the first accelerator."""

from __future__ import annotations

import json
import sys

import pytest

from tests.support import procs

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_dry_run_passes_every_section_and_writes_one_report(tmp_path):
  out = str(tmp_path / "check.json")
  argv = [sys.executable, "-m", "vdae.benchmarks.accelerator_check", "--dry", f"--json={out}"]
  argv.append("--budget=800")  # room for a 3x slower machine
  cache = str(tmp_path / "xla")
  rc, log = procs.run(argv, procs.child_env(cache, devices=1), str(tmp_path / "log"), 870)
  assert rc == 0, log[-4000:]
  with open(out) as f:
    report = json.load(f)
  sections = report["sections"]
  assert list(sections) == ["device", "kernel", "train", "imported", "decode", "run_all"]
  assert all(s["status"] == "ok" for s in sections.values()), sections
  assert report["dry"] and report["device"]["backend"] == "cpu"
  assert report["device"]["peak_f32_flops"] > 0 and report["device"]["copy_bytes_per_s"] > 0
  # The Pallas kernels (interpret mode here) against the XLA reference: float32 rounding
  # of a step's update (values ~1) and of a residual summed over 64 pixels (values ~100).
  kernel = sections["kernel"]["rows"]
  assert len(kernel) == 2 and all(r["max_abs_error"] < 1e-4 for r in kernel), kernel
  train = {r["what"]: r for r in sections["train"]["rows"]}
  assert {w.split(" batch")[0] for w in train} == {
    f"stage {s} {d}" for s in (1, 2) for d in ("float32", "bfloat16")
  }
  for r in [*train.values(), *sections["imported"]["rows"]]:
    assert r["images_per_s"] > 0 and 0 < r["mfu_of_measured_peak"], r
  assert sections["imported"]["rows"][0]["parameters"] > 0
  assert all(r["images_per_s"] > 0 for r in sections["decode"]["rows"])
  (run,) = sections["run_all"]["rows"]
  assert {"stage1", "stage2", "evaluate"} <= set(run["seconds"]) and run["metrics"] > 10
  # One table on stdout, a line per case.
  assert "accelerator check (dry run" in log and "run_all   --mode=all 8x8" in log


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
  "flag,needle",
  [("--budget=0", "--budget=0 must be positive"), ("--json={d}", "cannot write a file there")],
)
def test_bad_arguments_are_refused_before_anything_runs(tmp_path, flag, needle):
  """A report path that cannot be written is named at once, not after the measurements."""
  argv = [sys.executable, "-m", "vdae.benchmarks.accelerator_check", "--dry"]
  argv.append(flag.format(d=tmp_path))  # a directory is not a file
  rc, log = procs.run(argv, procs.child_env(str(tmp_path / "xla")), str(tmp_path / "log"), 100)
  assert rc == 2 and needle in log and "Traceback" not in log, log[-3000:]
  assert "accelerator check (" not in log  # refused before any section ran
