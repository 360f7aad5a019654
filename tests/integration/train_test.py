"""Training loops: sharding invariance, exact resume, preemption, CLI errors."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vdae.io.errors import CheckpointError, ConfigError
from vdae.parallel import sharding
from vdae.training import preemption, stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _params_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _train(name, config, workdir, devices):
  return stages.train(name, config, str(workdir), mesh=sharding.make_mesh(config.mesh, devices))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_same_step_same_numbers_on_1_and_4_devices(tmp_path, tiny_config):
  """One device vs a 2x2 (data x fsdp) mesh: same loss and parameters."""
  assert jax.device_count() == 4
  cfg = tiny_config
  cfg.stage1.num_steps = 3
  one = _train("stage1", cfg, tmp_path / "one", jax.devices()[:1])
  cfg4 = cfg.copy_and_resolve_references()
  cfg4.mesh.data, cfg4.mesh.fsdp = 2, 2
  four = _train("stage1", cfg4, tmp_path / "four", jax.devices())
  # The 2x2 run really is sharded: some parameter is split over `fsdp`.
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(four.params)}
  assert any("fsdp" in s for s in specs), specs
  _params_close(one.params, four.params)
  _params_close(one.ema_params, four.ema_params)
  assert int(one.step) == int(four.step) == 3


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_profile_steps_write_a_trace_tensorboard_opens(tmp_path, mini_config):
  cfg = mini_config
  cfg.stage1.num_steps = 4
  cfg.loop.profile_steps = (2, 3)
  stages.train("stage1", cfg, str(tmp_path))
  profile = tmp_path / "tensorboard" / "stage1" / "plugins" / "profile"
  traces = [p.name for p in profile.glob("*/*") if p.name.endswith(".xplane.pb")]
  assert len(traces) == 1, list(profile.glob("*/*"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_after_preemption_reaches_the_same_parameters(tmp_path, mini_config, monkeypatch):
  cfg = mini_config
  cfg.stage1.num_steps = 6
  cfg.stage1.checkpoint_every = 100  # only the preemption save and the final one
  full = stages.train("stage1", cfg, str(tmp_path / "full"))

  calls = {"n": 0}

  def preempt_at_4(self, step):
    calls["n"] += 1
    return step == 4

  monkeypatch.setattr(preemption.Preemption, "reached", preempt_at_4)
  with pytest.raises(SystemExit) as e:
    stages.train("stage1", cfg, str(tmp_path / "cut"))
  assert e.value.code == 143
  assert sorted(os.listdir(tmp_path / "cut" / "stage1" / "checkpoints")) == ["4"]
  monkeypatch.undo()
  resumed = stages.train("stage1", cfg, str(tmp_path / "cut"))
  assert int(resumed.step) == 6
  _params_close(full.params, resumed.params, rtol=1e-6, atol=1e-7)
  _params_close(full.opt_state, resumed.opt_state, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_stage2_gradient_path_and_checkpoint_errors(tmp_path, mini_config):
  cfg = mini_config
  with pytest.raises(CheckpointError, match="no stage-1 checkpoint"):
    stages.trainer("stage2", cfg, str(tmp_path))
  assert not (tmp_path / "stage2").exists()
  cfg.stage1.num_steps = 2
  stages.train("stage1", cfg, str(tmp_path))
  other = cfg.copy_and_resolve_references()
  other.model.channels = 16
  with pytest.raises(CheckpointError, match="model.channels"):
    stages.trainer("stage2", other, str(tmp_path))
  assert not (tmp_path / "stage2").exists()
  # The frozen score params are an argument of the step, not part of its state.
  t = stages.trainer("stage2", cfg, str(tmp_path))
  state = t.train()
  names = {"/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert not any("ResBlock" in n and "Encoder" not in n for n in names if "UNet" in n)
  n_enc = sum(x.size for x in jax.tree.leaves(state.params))
  n_score = sum(x.size for x in jax.tree.leaves(t.stage.frozen))
  assert n_enc != n_score


def test_mesh_that_does_not_fit_the_devices(tiny_config):
  cfg = tiny_config.mesh
  cfg.data, cfg.fsdp = 3, 1
  with pytest.raises(ConfigError, match="does not fit"):
    sharding.make_mesh(cfg)
  cfg.data, cfg.fsdp = 2, 4
  with pytest.raises(ConfigError, match="4 available"):
    sharding.make_mesh(cfg)


def _cli(*args, timeout=180):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  return subprocess.run(
    [sys.executable, "-m", "vdae.main", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
  "override,needle",
  [
    ("--config.stage1.num_stepz=3", "num_stepz"),
    ("--config.stage1.num_steps=abc", "num_steps"),
    ("--config.data.source=csv", "data.source"),
    ("--config.stage1.batch_size=7", "batch size 7"),
    ("--config.training.num_steps=3", "names a field the config does not have: training"),
  ],
)
def test_cli_rejects_bad_config(tmp_path, override, needle):
  r = _cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=pretrain", override)
  assert r.returncode != 0
  assert needle in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "stage1" / "checkpoints").exists() or not os.listdir(
    tmp_path / "stage1" / "checkpoints"
  )


@pytest.mark.timeout(200)
def test_cli_missing_stage1_checkpoint(tmp_path):
  r = _cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=train_encoder")
  assert r.returncode == 2
  assert "no stage-1 checkpoint" in r.stderr and "Traceback" not in r.stderr
