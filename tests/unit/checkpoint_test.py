"""Orbax checkpoints: a save restores exactly into a sharded target; metadata; damage."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdae.io.errors import CheckpointError
from vdae.training import checkpoint, restore

pytestmark = pytest.mark.timeout(60)


def test_save_restore_round_trip_into_a_sharded_target(tmp_path):
  mesh = jax.make_mesh((4,), ("fsdp",))
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  state = {"w": jax.device_put(jnp.arange(16.0), spec), "step": jnp.int32(3)}
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=2, async_save=False)
  ck.save(3, state, None, {"stage": "x", "config": {}, "image_shape": [1, 1, 1]}, force=True)
  ck.wait()
  assert ck.steps() == [3] and ck.read_meta()["stage"] == "x"
  target = checkpoint.abstract_like(state, jax.tree.map(lambda a: a.sharding, state))
  step, got = ck.restore(target)
  ck.close()
  assert step == 3
  np.testing.assert_array_equal(got["w"], np.arange(16.0))
  assert got["w"].sharding == spec


def test_a_step_with_unreadable_metadata_is_skipped(tmp_path):
  state = {"w": jnp.ones(4)}
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=3, async_save=False)
  for s in (1, 2):
    ck.save(s, state, None, {"stage": f"s{s}", "config": {}, "image_shape": []}, force=True)
  ck.wait()
  os.remove(tmp_path / "ck" / "2" / "meta" / "metadata")
  assert ck.read_meta()["stage"] == "s1"
  ck.close()


def test_check_meta_names_the_differing_field(tiny_config):
  meta = {"config": restore.config_json(tiny_config), "image_shape": [8, 8, 1]}
  other = tiny_config.copy_and_resolve_references()
  other.vae.decoder_channels = 99
  with pytest.raises(CheckpointError, match=r"differs in: vae.decoder_channels\). hint"):
    restore.check_meta(meta, other, ("vae.decoder_channels",), (8, 8, 1), "here", "hint")
  with pytest.raises(CheckpointError, match="shape"):
    restore.check_meta(meta, tiny_config, ("model",), (6, 6, 3), "here", "hint")
