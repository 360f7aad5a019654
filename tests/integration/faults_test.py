"""Surviving faults, for real, in child processes: SIGKILL at random moments
(some of them in the middle of an async checkpoint save), SIGTERM, damaged
checkpoint files, and a non-finite loss. Each run resumes to exactly the
parameters of an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import time

import jax
import numpy as np
import pytest

from tests.support import procs

pytestmark = pytest.mark.slow

N = 16  # steps of every full run here


@pytest.fixture(scope="module")
def cache(request, tmp_path_factory) -> str:
  return procs.compile_cache(request, tmp_path_factory)


def _stage1(cache: str, wd: str, *flags: str, timeout: float = 240) -> tuple[int, str]:
  log = os.path.join(os.path.dirname(wd), f"{os.path.basename(wd)}.log")
  return procs.run(
    procs.driver(f"--workdir={wd}", "--stages=pretrain", *flags),
    procs.child_env(cache),
    log,
    timeout,
  )


def _ckpt(wd: str) -> str:
  return os.path.join(wd, "stage1", "checkpoints")


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory) -> dict:
  """The final state of an uninterrupted N-step run."""
  wd = str(tmp_path_factory.mktemp("ref") / "wd")
  rc, out = _stage1(cache, wd, f"--config.stage1.num_steps={N}")
  assert rc == 0, out[-4000:]
  return procs.read_state(_ckpt(wd), N)


@pytest.fixture(scope="module")
def six_steps(cache, tmp_path_factory) -> str:
  """A workdir stopped after 6 of N steps, checkpoints at 2, 4, 6 (tests copy it)."""
  wd = str(tmp_path_factory.mktemp("six") / "wd")
  rc, out = _stage1(cache, wd, "--config.stage1.num_steps=6", "--config.stage1.checkpoint_every=2")
  assert rc == 0, out[-4000:]
  assert procs.steps(_ckpt(wd)) == [2, 4, 6]
  return wd


def _tmp_dirs(ckpt_dir: str) -> list[str]:
  if not os.path.isdir(ckpt_dir):
    return []
  return [d for d in os.listdir(ckpt_dir) if not d.isdigit()]


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_then_resume(cache, reference, tmp_path):
  """4 SIGKILLs, each followed by a restart; every other one lands while an
  async save is being written. No kill leaves a checkpoint that restore trips
  over, and the last run ends on the uninterrupted run's parameters."""
  rng = random.Random(5)
  wd = str(tmp_path / "wd")
  flags = (
    f"--workdir={wd}",
    "--stages=pretrain",
    f"--config.stage1.num_steps={N}",
    "--config.stage1.checkpoint_every=1",
    "--config.loop.async_checkpointing=True",
  )
  ck = _ckpt(wd)
  mid_save = 0
  for kill in range(4):
    before, leftovers = procs.steps(ck), set(_tmp_dirs(ck))
    saving = lambda old=leftovers: set(_tmp_dirs(ck)) - old  # a save of this run in flight
    p = procs.Proc(procs.driver(*flags), procs.child_env(cache), str(tmp_path / f"run{kill}.log"))
    try:
      if kill % 2:  # the moment a save is being written
        procs.wait_for(saving, 120, "a checkpoint save", [p])
      else:  # a random moment once training is under way
        started = lambda b=before, saving=saving: procs.steps(ck) != b or saving()
        procs.wait_for(started, 120, "training", [p])
        _sleep_while_running(p, rng.uniform(0.0, 1.5))
      assert p.running(), "the run ended before it could be killed; raise N"
      mid_save += bool(saving())
      p.kill()
    finally:
      p.kill()
    out = p.output()
    if before:  # the restart restored the newest complete checkpoint, nothing damaged
      assert f"stage1: resumed from step {before[-1]}" in out, out[-3000:]
    assert "could not be restored" not in out, out[-3000:]
  assert mid_save >= 2
  rc, out = procs.run(procs.driver(*flags), procs.child_env(cache), str(tmp_path / "last.log"), 240)
  assert rc == 0, out[-4000:]
  assert "could not be restored" not in out
  assert re.search(r"stage1: resumed from step \d+", out), out[-3000:]
  assert not _tmp_dirs(ck)  # leftovers of killed saves were cleaned up
  procs.assert_trees_close(reference, procs.read_state(ck, N), rtol=1e-6, atol=1e-7)


def _sleep_while_running(p: procs.Proc, seconds: float) -> None:
  t_end = time.monotonic() + seconds
  while time.monotonic() < t_end and p.running():
    time.sleep(0.02)


@pytest.mark.timeout(240)
def test_sigterm_saves_at_the_next_step_and_exits_143(cache, reference, tmp_path):
  wd = str(tmp_path / "wd")
  flags = (
    f"--workdir={wd}",
    "--stages=pretrain",
    f"--config.stage1.num_steps={N}",
    "--config.stage1.checkpoint_every=1000",
  )  # only the preemption save
  p = procs.Proc(procs.driver(*flags), procs.child_env(cache), str(tmp_path / "cut.log"))
  tb = os.path.join(wd, "tensorboard", "stage1")
  training = lambda: os.path.isdir(tb) and os.listdir(tb)
  rc, out = procs.sigterm_when(p, training, 120, "training", grace=120)
  assert rc == 143, out[-4000:]
  k = int(re.search(r"stage1: preempted; checkpoint saved at step (\d+)", out).group(1))
  assert procs.steps(_ckpt(wd)) == [k] and k < N
  rc, out = _stage1(
    cache, wd, f"--config.stage1.num_steps={N}", "--config.stage1.checkpoint_every=1000"
  )
  assert rc == 0, out[-4000:]
  assert f"stage1: resumed from step {k}" in out
  procs.assert_trees_close(reference, procs.read_state(_ckpt(wd), N), rtol=1e-6, atol=1e-7)


def _array_files(step_dir: str) -> list[str]:
  """The array data files of a checkpoint step: each process's OCDBT `d/` chunks
  (the top-level `state/d/` holds index nodes a restore need not read)."""
  state = os.path.join(step_dir, "state")
  return [
    os.path.join(dp, f)
    for dp, _, fs in os.walk(state)
    if os.path.basename(dp) == "d" and os.path.basename(os.path.dirname(dp)).startswith("ocdbt.")
    for f in fs
  ]


@pytest.mark.timeout(240)
def test_damaged_newest_checkpoints_are_skipped_and_moved_aside(
  cache, reference, six_steps, tmp_path
):
  wd = str(tmp_path / "wd")
  shutil.copytree(six_steps, wd)
  ck = _ckpt(wd)
  for path in _array_files(os.path.join(ck, "6")):
    with open(path, "r+b") as f:
      f.truncate(100)  # step 6: array files cut short
  os.remove(os.path.join(ck, "4", "meta", "metadata"))  # step 4: its metadata gone
  damaged6 = procs.snapshot(os.path.join(ck, "6"))
  rc, out = _stage1(
    cache, wd, f"--config.stage1.num_steps={N}", "--config.stage1.checkpoint_every=2"
  )
  assert rc == 0, out[-4000:]
  assert f"{ck}/6 could not be restored" in out and f"{ck}/4 could not be restored" in out
  assert "stage1: resumed from step 2" in out
  assert sorted(os.listdir(ck + ".damaged")) == ["4", "6"]
  assert procs.snapshot(os.path.join(ck + ".damaged", "6")) == damaged6  # kept as it was
  procs.assert_trees_close(reference, procs.read_state(ck, N), rtol=1e-6, atol=1e-7)

  # Nothing restorable: a clear error, and nothing moved or deleted.
  wd2 = str(tmp_path / "wd2")
  shutil.copytree(six_steps, wd2)
  for s in (2, 4, 6):
    for path in _array_files(os.path.join(_ckpt(wd2), str(s))):
      os.remove(path)
  before = procs.snapshot(wd2)
  rc, out = _stage1(cache, wd2, f"--config.stage1.num_steps={N}")
  assert rc == 2, out[-4000:]
  assert "vdae: error: none of the checkpoints" in out and "Traceback" not in out
  assert procs.snapshot(wd2) == before


@pytest.mark.timeout(240)
def test_nonfinite_loss_stop_keeps_the_last_good_checkpoint(cache, six_steps, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(six_steps, wd)
  before = procs.snapshot(_ckpt(wd))
  # lr=1e30: step 7's update makes the weights ~1e30 and step 8's loss overflow.
  rc, out = _stage1(
    cache,
    wd,
    f"--config.stage1.num_steps={N}",
    "--config.stage1.lr=1e30",
    "--config.stage1.checkpoint_every=2",
  )
  assert rc == 2, out[-4000:]
  assert re.search(r"vdae: error: stage1: non-finite loss or gradient at step \d+", out)
  assert "the last good checkpoint is step 6" in out and "Traceback" not in out
  assert procs.snapshot(_ckpt(wd)) == before  # nothing written, nothing lost

  # loop.on_nonfinite=skip: the run goes on, non-finite updates are not
  # applied (the state stays finite) and the metric says how often.
  rc, out = _stage1(
    cache,
    wd,
    f"--config.stage1.num_steps={N}",
    "--config.stage1.lr=1e30",
    "--config.stage1.checkpoint_every=2",
    "--config.loop.on_nonfinite=skip",
  )
  assert rc == 0, out[-4000:]
  state = procs.read_state(_ckpt(wd), N)
  for leaf in (state["params"], state["opt_state"], state["ema_params"]):
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(leaf))
  flags = procs.read_scalars(os.path.join(wd, "tensorboard", "stage1"), "train/nonfinite")
  assert flags[N] == 1.0 and flags[2] == 0.0
  skipped = procs.read_scalars(os.path.join(wd, "tensorboard", "stage1"), "train/nonfinite_steps")
  assert 1 <= skipped[N] <= N - 6


@pytest.mark.timeout(120)
def test_a_one_off_nonfinite_step_between_log_steps_stops_the_run(tiny_config):
  """`on_nonfinite=stop` must not depend on the bad step landing on a log step: the
  train step itself notes every skipped update on device."""
  from types import SimpleNamespace

  import jax.numpy as jnp

  from vdae.io.errors import NonFiniteError
  from vdae.parallel import sharding
  from vdae.training import loop
  from vdae.training import state as state_lib
  from vdae.training import step as step_lib

  mesh = sharding.make_mesh(tiny_config.mesh)
  loss_fn = lambda p, b, key, frozen: (jnp.sum(p["w"]) * jnp.mean(b["image"]), {})
  opt, _ = state_lib.make_optimizer(1e-3, 1, 10, tiny_config.optim)
  state, shardings = state_lib.create_sharded(
    lambda key: {"w": jnp.ones((4,))}, opt, 0, mesh, tiny_config.mesh.param_rules
  )
  step_fn = step_lib.jit_step(loss_fn, opt, 0.999, shardings, None, mesh)
  watch = step_lib.NonFiniteWatch(mesh)
  for bad in [0, 0, 1, 0, 1, 0, 0]:
    image = np.full((4, 8, 8, 1), np.nan if bad else 0.5, np.float32)
    local = {"image": image, "label": np.zeros(4, np.int32), "index": np.arange(4, dtype=np.int32)}
    state, _, watch.arrays = step_fn(state, sharding.global_batch(local, mesh), None, watch.arrays)
  assert watch.read() == (3, 2)
  assert int(state.step) == 7 and np.all(np.isfinite(np.asarray(state.params["w"])))

  ckpt = SimpleNamespace(wait=lambda: None, latest_step=lambda: 2)
  with pytest.raises(NonFiniteError, match="at step 3.*last good checkpoint is step 2"):
    loop.FiniteGuard("stage1", "stop", watch, ckpt).check()
  assert loop.FiniteGuard("stage1", "skip", watch, ckpt).check() == 2


_ABANDONED_READ = """
class _Suspend:
  def __await__(self):
    yield

async def read():
  try:
    await _Suspend()
  except BaseException as e:  # as Orbax's array reads do, GeneratorExit included
    raise Exception("read failed") from e
"""


def _read_coroutine(filename: str):
  scope = {}
  exec(compile(_ABANDONED_READ, filename, "exec"), scope)
  coro = scope["read"]()
  coro.send(None)  # suspended mid-read, as when Orbax abandons it
  return coro


@pytest.mark.timeout(30)
def test_only_orbax_abandoned_reads_are_silenced(monkeypatch):
  """While a restore runs, vdae/training/checkpoint.py's filters drop Orbax's abandoned
  reads (a damaged restore has printed hundreds) and nothing else; then they come off."""
  import gc
  import logging

  from vdae.training import checkpoint

  printed = []
  hook = printed.append
  monkeypatch.setattr(sys, "unraisablehook", hook)
  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "serialization.py")
  user_file = os.path.join(os.sep, "site-packages", "mine", "reads.py")
  with checkpoint._QuietAbandonedReads() as quiet:  # as a restore that gave up on a step
    quiet.failed = True
    coros = [_read_coroutine(f) for f in (orbax_file, user_file)]
    del coros  # collected on the way out, inside the filters (closing one raises out of it)
  assert sys.unraisablehook is hook  # the interpreter's hook is back
  assert [u.object.cr_code.co_filename for u in printed] == [user_file]
  coro = _read_coroutine(orbax_file)
  del coro
  gc.collect()
  assert len(printed) == 2  # outside a restore, Orbax's fallout prints too

  def record(filename: str, msg: str) -> logging.LogRecord:
    coro = _read_coroutine(filename)
    try:
      coro.throw(OSError("truncated"))
    except Exception as e:  # noqa: BLE001
      exc_info = (type(e), e, e.__traceback__)
    return logging.LogRecord("asyncio", logging.ERROR, "", 0, msg, (), exc_info)

  keep = checkpoint._DropAbandonedReads().filter
  assert not keep(record(orbax_file, "Task exception was never retrieved"))
  assert keep(record(user_file, "Task exception was never retrieved"))
  assert keep(record(orbax_file, "Executing <Task> took 0.3 seconds"))
