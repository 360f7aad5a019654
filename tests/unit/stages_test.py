"""The stage table: one declaration per stage, read by the spec builder, the loader and
the "is it trained?" check."""

import os

import jax
import pytest

from vdae import schema
from vdae.io.errors import CheckpointError
from vdae.parallel import sharding
from vdae.training import stages

pytestmark = pytest.mark.timeout(120)


def test_every_stage_has_a_config_group_a_mode_and_a_table_entry(tiny_config):
  assert tuple(stages.STAGES) == schema.STAGE_GROUPS
  from vdae import main

  for name, s in stages.STAGES.items():
    assert s.mode in main.COMMANDS, name
    assert set(schema.STAGE_FIELDS) <= set(tiny_config[name])


def test_a_stage_reads_its_config_group(tiny_config):
  c = tiny_config
  c.vae.num_steps, c.vae.lr, c.vae.image_every = 7, 3e-4, 5
  stage = stages.VAE(stages.context(c, "/nonexistent"))
  g = stage.group
  assert (g.num_steps, g.lr, g.image_every, g.batch_size) == (7, 3e-4, 5, 16)
  assert stage.compare_keys[0] == "encoder" and stage.frozen is None
  params = stage.init_params(jax.random.key(0))
  assert set(params) == {"encoder", "decoder", "obs_log_var"}


def test_is_trained_and_the_loader_agree_on_a_missing_stage(tmp_path, tiny_config):
  assert not stages.is_trained("stage1", tiny_config, str(tmp_path))
  os.makedirs(tmp_path / "stage1" / "checkpoints" / "3.orbax-checkpoint-tmp-1")
  assert not stages.is_trained("stage1", tiny_config, str(tmp_path))  # an unfinished save
  mesh = sharding.make_mesh(tiny_config.mesh)
  with pytest.raises(CheckpointError, match="no stage-1 checkpoint.*--mode=pretrain"):
    stages.load_stage("stage1", tiny_config, str(tmp_path), mesh, (8, 8, 1))
  # Readers of stage 1 look where stage2.stage1_workdir points.
  tiny_config.stage2.stage1_workdir = str(tmp_path / "elsewhere")
  assert stages.checkpoint_dir("stage1", tiny_config, str(tmp_path)).startswith(
    str(tmp_path / "elsewhere")
  )


def test_the_encoder_is_only_paired_with_the_score_params_it_was_trained_against(
  tmp_path, tiny_config
):
  from vdae.io.errors import ConfigError

  wd = str(tmp_path)
  os.makedirs(os.path.join(wd, "stage1", "checkpoints", "40"))
  recorded = stages.score_pairing(tiny_config, wd)
  assert recorded == {"score_params": "ema", "score_step": 40}
  stages.check_pairing(recorded, tiny_config, wd, "decode")  # the pair it was trained with
  stages.check_pairing({}, tiny_config, wd, "decode")  # old checkpoints record nothing
  os.makedirs(os.path.join(wd, "stage1", "checkpoints", "80"))  # stage 1 trained on since
  with pytest.raises(CheckpointError, match="trained against stage-1 step 40.*now at step 80"):
    stages.check_pairing(recorded, tiny_config, wd, "decode")
  raw = tiny_config.copy_and_resolve_references()
  raw.sampling.use_ema = False
  with pytest.raises(ConfigError, match="sampling.use_ema=false would decode with the raw"):
    stages.check_pairing(stages.score_pairing(raw, wd), raw, wd, "decode")
