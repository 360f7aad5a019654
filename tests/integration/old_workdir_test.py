"""A workdir written by an earlier commit (tests/fixtures/workdir, tests/support/
workdir_fixture.py) loads, computes what it computed then, and resumes: a change to a
network's parameter tree, its optimiser state or its arithmetic fails here before it
strands a user's checkpoints."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from tests.support import procs, workdir_fixture

pytestmark = pytest.mark.slow

FIXTURE = os.path.join(procs.ROOT, "tests", "fixtures", "workdir")


@pytest.fixture
def workdir(tmp_path) -> str:
  """A copy: loading may write nothing into the repository's."""
  wd = str(tmp_path / "wd")
  shutil.copytree(FIXTURE, wd)
  return wd


@pytest.mark.timeout(300)
def test_every_network_computes_what_it_did_when_saved(workdir, monkeypatch):
  from vdae.evaluation import classifier

  def retrain(*args, **kwargs):
    raise AssertionError("the saved judge was not read")

  monkeypatch.setattr(classifier, "train_classifier", retrain)
  got = workdir_fixture.outputs(workdir_fixture.config(), workdir)
  with np.load(os.path.join(FIXTURE, "outputs.npz")) as f:
    want = dict(f)
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.timeout(300)
def test_every_stage_resumes_from_its_saved_state(workdir):
  """One more step of each stage from the saved one (downstream stages first, so each
  still finds the upstream step it recorded)."""
  from vdae.training import stages

  cfg = workdir_fixture.config()
  for name in reversed(workdir_fixture.STAGES):
    cfg[name].num_steps = workdir_fixture.STEPS + 1
    state = stages.train(name, cfg, workdir)
    assert int(state.step) == workdir_fixture.STEPS + 1, name
    assert procs.steps(stages.checkpoint_dir(name, cfg, workdir)) == [workdir_fixture.STEPS + 1]
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(state.params)), name
