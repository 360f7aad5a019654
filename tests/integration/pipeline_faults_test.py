"""Nothing lost, whatever happens, across the whole pipeline (`--mode=all` in child
processes): one run per workdir, SIGTERM during the evaluation's -ELBO solve, and SIGKILL at random
moments in every phase with a SIGTERM between stages among them, each followed by a
rerun that must end with the checkpoints and metrics of an uninterrupted run.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import typing

import pytest

from tests.support import procs

pytestmark = pytest.mark.slow

# Long enough that a kill can land between a stage's checkpoints (a MINI step takes
# tens of milliseconds once compiled).
FLAGS = (
  "--config.stage1.num_steps=60",
  "--config.stage1.checkpoint_every=10",
  "--config.stage2.num_steps=24",
  "--config.stage2.checkpoint_every=6",
  "--config.vae.num_steps=24",
  "--config.vae.checkpoint_every=6",
  "--config.refiner.num_steps=24",
  "--config.refiner.checkpoint_every=6",
  "--config.loop.async_checkpointing=true",
  # A cheaper evaluation: what is tested is that it survives, not its numbers.
  "--config.eval.timing_methods=('',)",
  "--config.eval.protocols=('sample','mode')",
  "--config.eval.bpd_num_images=0",
  # Two images' -ELBO in pieces of 4 solver steps: a SIGTERM lands inside the solve.
  "--config.eval.elbo_num_images=2",
  "--config.eval.bpd_piece_steps=4",
  "--config.eval.classifier_steps=30",
  "--config.eval.probe_max_iter=50",
)
STAGES = (("stage1", 60), ("stage2", 24), ("vae", 24), ("refiner", 24))


@pytest.fixture(scope="module")
def cache(request, tmp_path_factory) -> str:
  return procs.compile_cache(request, tmp_path_factory)


def _all(wd: str, *extra: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "vdae.main",
    *procs.MINI,
    f"--workdir={wd}",
    "--mode=all",
    *FLAGS,
    *extra,
  ]


def _start(cache, argv, log) -> procs.Proc:
  return procs.Proc(argv, procs.child_env(cache), log)


def _metrics(wd: str) -> dict:
  with open(os.path.join(wd, "eval", "metrics.json")) as f:
    return {k: v for k, v in json.load(f).items() if "time_per_image" not in k}


def _assert_same_run(ref: str, wd: str) -> None:
  for stage, n in STAGES:
    ck = os.path.join(wd, stage, "checkpoints")
    assert procs.steps(ck)[-1] == n, (stage, procs.steps(ck))
    procs.assert_trees_close(
      procs.read_state(os.path.join(ref, stage, "checkpoints"), n),
      procs.read_state(ck, n),
      rtol=1e-6,
      atol=1e-7,
      what=f"{stage} ",
    )
  want, got = _metrics(ref), _metrics(wd)
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


class Reference(typing.NamedTuple):
  wd: str  # an uninterrupted --mode=all
  pid: int  # its process
  refused: tuple[int, str]  # what a second run on its workdir said meanwhile (status, output)


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory) -> Reference:
  """An uninterrupted --mode=all; while it runs, a second run on its workdir (which must
  be refused: test_a_second_run_on_the_same_workdir_is_refused)."""
  wd = str(tmp_path_factory.mktemp("all_ref") / "wd")
  first = _start(cache, _all(wd), wd + ".log")
  try:
    procs.wait_for(lambda: os.path.exists(os.path.join(wd, ".vdae.lock")), 120, "the lock", [first])
    second = [sys.executable, "-m", "vdae.main", *procs.MINI, f"--workdir={wd}", "--mode=pretrain"]
    refused = procs.run(second, procs.child_env(cache), wd + ".second.log", timeout=120)
    rc = first.wait(timeout=600)
  finally:
    first.kill()
  assert rc == 0, first.output()[-4000:]
  return Reference(wd, first.pid, refused)


@pytest.mark.timeout(900)  # includes the module's reference run
def test_a_second_run_on_the_same_workdir_is_refused(reference):
  rc, out = reference.refused
  assert rc == 2, out[-3000:]
  assert f"vdae: error: workdir '{reference.wd}' is in use by pid {reference.pid}" in out, out
  assert "Traceback" not in out
  # The first run went on to the end (the reference's exit status 0) and released the lock.
  for stage, n in STAGES:
    assert procs.steps(os.path.join(reference.wd, stage, "checkpoints"))[-1] == n
  assert not os.path.exists(os.path.join(reference.wd, ".vdae.lock"))


@pytest.mark.timeout(400)
def test_sigterm_during_the_elbo_solve_exits_in_seconds_and_the_rerun_finishes(
  cache, reference, tmp_path
):
  """A SIGTERM inside the VDAE's -ELBO solve (the longest computation of an evaluation)
  is honoured between two pieces of the solve: exit 143 within a preemption notice, the
  models evaluated before it kept, and the rerun evaluates only what is missing and ends
  with the uninterrupted run's metrics."""
  wd = str(tmp_path / "wd")
  shutil.copytree(reference.wd, wd)
  shutil.rmtree(os.path.join(wd, "eval"))
  argv = [
    sys.executable,
    "-m",
    "vdae.main",
    *procs.MINI,
    f"--workdir={wd}",
    "--mode=evaluate",
    *FLAGS,
  ]
  job = _start(cache, argv, str(tmp_path / "eval.log"))
  try:
    solving = lambda: "vdae/neg_elbo_bits_per_dim: batch 0 at t" in job.output()
    procs.wait_for(solving, 240, "the -ELBO solve", [job])
    t0 = time.monotonic()
    job.signal(signal.SIGTERM)
    rc = job.wait(timeout=60)
    latency = time.monotonic() - t0
  finally:
    job.kill()
  out = job.output()
  assert rc == 143, out[-4000:]
  assert latency < 30, latency
  assert "preempted in vdae/neg_elbo_bits_per_dim, batch 0" in out and "Traceback" not in out
  assert not os.path.exists(os.path.join(wd, "eval", "metrics.json"))
  kept = sorted(os.listdir(os.path.join(wd, "eval", "parts")))
  assert [f for f in kept if f.endswith(".json")] == [
    "refined_vae.json",
    "sdedit_vae.json",
    "vae.json",
  ], kept
  rc, out = procs.run(argv, procs.child_env(cache), str(tmp_path / "rerun.log"), timeout=300)
  assert rc == 0, out[-4000:]
  for k, name in enumerate(("vae", "sdedit_vae", "refined_vae")):
    assert f"evaluate: {name} ({k + 1}/4): kept from an earlier run" in out, name
  assert "evaluate: vdae (4/4)" in out and "vdae (4/4): kept" not in out
  want, got = _metrics(reference.wd), _metrics(wd)
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6, nan_ok=True), k
  assert want["vdae/neg_elbo_bits_per_dim_converged"] == 1.0


# Where each phase of --mode=all begins in its log (the tqdm bars name the stages).
PHASES = (
  ("stage1", r"stage1: "),
  ("stage2", r"stage2: "),
  ("vae", r"vae: "),
  ("refiner", r"refiner: "),
  ("pictures", r"refiner: 100%"),
  ("evaluate", r"evaluate: classifier took"),
)


def _phase(out: str) -> str:
  """What a --mode=all was doing when its log ended: the last phase begun."""
  last, where = "start-up", -1
  for name, rx in PHASES:
    for m in re.finditer(rx, out):
      if m.start() >= where:
        last, where = name, m.start()
  return last


def _sigterm_between_stages(cache, wd: str, log: str) -> None:
  """SIGTERM once stage 1's last checkpoint is written: exit 143, no traceback, no metrics.
  (A stage's progress bar in this run's log: its SIGTERM handler is in place, even where
  an earlier run wrote that checkpoint.)"""
  job = _start(cache, _all(wd), log)
  final = os.path.join(wd, "stage1", "checkpoints", "60")
  done = lambda: os.path.isdir(final) and re.search(r"stage[12]: ", job.output())
  rc, out = procs.sigterm_when(job, done, 300, "stage 1's last checkpoint")
  assert rc == 143, out[-4000:]
  assert "Traceback" not in out
  assert not os.path.exists(os.path.join(wd, "eval", "metrics.json"))


@pytest.mark.timeout(1500)
def test_sigkill_soak_over_the_whole_pipeline(cache, reference, tmp_path):
  """6 SIGKILLs of --mode=all, one aimed at each phase (a random moment after it
  begins), and a SIGTERM between stages 1 and 2 (exit 143), each followed by a restart;
  then the run finishes with the uninterrupted run's checkpoints and metrics, and no
  temporary file is left anywhere."""
  rng = random.Random(0)
  wd = str(tmp_path / "wd")
  kills = collections.Counter()
  resumed = []
  for i in range(len(PHASES)):
    target = PHASES[i][0]
    if target == "stage2":  # stage 1 has been killed mid-stage; now stop it gracefully
      _sigterm_between_stages(cache, wd, str(tmp_path / "sigterm.log"))
    later = "|".join(rx for _, rx in PHASES[i + 1 :])
    ck = os.path.join(wd, target, "checkpoints")

    def begun(job, target=target, later=later, ck=ck):
      out = job.output()
      if not job.running() or (later and re.search(later, out)):
        return True
      if target in dict(STAGES):  # mid-stage: after its first checkpoint of this run
        return bool(procs.steps(ck)) and f"{target}: " in out
      return re.search(dict(PHASES)[target], out)

    job = _start(cache, _all(wd), str(tmp_path / f"run{i}.log"))
    try:
      procs.wait_for(lambda job=job: begun(job), 180, target)
      time.sleep(rng.uniform(0.0, 0.5 if target in dict(STAGES) else 4.0))
      finished = not job.running()
      out = job.output()
    finally:
      job.kill()
    resumed += re.findall(r"(\w+): resumed from step (\d+)", out)
    if not finished:
      kills[_phase(out)] += 1
  print(f"kills per phase: {dict(kills)}; resumed at: {sorted(set(resumed))}")
  rc, out = procs.run(_all(wd), procs.child_env(cache), str(tmp_path / "final.log"), timeout=600)
  assert rc == 0, out[-4000:]
  # A kill can land just after its phase ended (the next one's, then): all but one land.
  assert sum(kills.values()) >= len(PHASES) - 1 and len(kills) >= len(PHASES) - 1, kills
  _assert_same_run(reference.wd, wd)
  left = [f for _, _, fs in os.walk(wd) for f in fs if f.endswith(".tmp")]
  assert not left, left
