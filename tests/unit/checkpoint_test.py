"""Orbax checkpoints: a save restores exactly into a sharded target; metadata; damage;
what a reader restores and when it reads it again."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdae.io.errors import CheckpointError
from vdae.parallel import sharding
from vdae.training import checkpoint, restore, state

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


def _save_state(ck, step, params, config):
  """A TrainState whose parameters and EMA differ, saved at `step`."""
  init = lambda k: params
  opt = optax.adam(1e-3)
  mesh = sharding.make_mesh(config.mesh)
  st, _ = state.create_sharded(init, opt, 0, mesh, config.mesh.param_rules)
  st = st.replace(ema_params=jax.tree.map(lambda p: 2 * p, st.params))
  meta = {"config": restore.config_json(config), "image_shape": [8, 8, 1]}
  ck.save(step, st, None, meta, force=True)
  ck.wait()
  return init, opt, mesh


def test_a_reader_restores_only_the_copy_it_asks_for_and_reuses_it_within_a_scope(
  tmp_path, tiny_config
):
  ck_dir = str(tmp_path / "ck")
  ck = checkpoint.Checkpointer(ck_dir, keep=5, async_save=False)
  w = {"dense": {"kernel": jnp.arange(8.0).reshape(4, 2), "bias": jnp.ones(2)}}
  init, opt, mesh = _save_state(ck, 1, w, tiny_config)

  def load(use_ema=True, config=tiny_config):
    kw = dict(keys=("vae",), image_shape=(8, 8, 1), what="x", run_first="y", use_ema=use_ema)
    return restore.restore_params(ck_dir, init, opt, config, mesh, **kw)[0]

  ema, params = load(), load(use_ema=False)
  np.testing.assert_array_equal(ema["dense"]["kernel"], 2 * np.arange(8.0).reshape(4, 2))
  np.testing.assert_array_equal(params["dense"]["bias"], np.ones(2))
  assert load() is not ema  # outside a scope every call reads the checkpoint
  with restore.reuse_loaded():
    first = load()
    assert load() is first and load(use_ema=False) is not first
    # A mismatched config is refused even when the parameters are at hand.
    other = tiny_config.copy_and_resolve_references()
    other.vae.decoder_channels = 99
    with pytest.raises(CheckpointError, match="vae.decoder_channels"):
      load(config=other)
    _save_state(ck, 2, jax.tree.map(lambda p: p + 1, w), tiny_config)  # a newer step
    np.testing.assert_array_equal(load()["dense"]["bias"], 4 * np.ones(2))
  ck.close()
  assert load() is not first


def test_a_checkpoint_of_other_networks_is_named_as_such_and_left_in_place(tmp_path):
  """Not "damaged": its arrays are whole, under other names. Nothing is moved aside."""
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=3, async_save=False)
  saved = {"params": {"Dense_0": {"kernel": jnp.ones((2, 3))}}, "step": jnp.int32(2)}
  ck.save(2, saved, None, {"stage": "x", "config": {}, "image_shape": []}, force=True)
  ck.wait()
  renamed = {"params": {"out": {"kernel": jnp.ones((2, 3))}}, "step": jnp.int32(0)}
  target = checkpoint.abstract_like(renamed, jax.tree.map(lambda a: a.sharding, renamed))
  with pytest.raises(CheckpointError, match=r"holds other networks") as e:
    ck.restore(target)
  ck.close()
  assert "params/out/kernel" in str(e.value) and "params/Dense_0/kernel" in str(e.value)
  assert ck.steps() == [2] and not os.path.exists(tmp_path / "ck.damaged")
  # The same tree is no difference (a restore that fails on it is damage, said as such),
  # and neither is a step whose metadata does not read.
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=3, async_save=False)
  same = checkpoint.abstract_like(saved, jax.tree.map(lambda a: a.sharding, saved))
  assert ck._tree_difference(2, same) is None
  assert "params/out/kernel" in ck._tree_difference(2, target)
  os.remove(tmp_path / "ck" / "2" / "state" / "_METADATA")
  assert ck._tree_difference(2, target) is None
  ck.close()


def test_a_train_state_and_its_saved_metadata_name_the_same_arrays(tmp_path, tiny_config):
  """The struct fields and optax's named tuples of a live state are the nested dicts of
  Orbax's metadata under the same names: no false "other networks"."""
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), keep=3, async_save=False)
  w = {"dense": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}
  init, opt, mesh = _save_state(ck, 1, w, tiny_config)
  st, _ = state.create_sharded(init, opt, 0, mesh, tiny_config.mesh.param_rules)
  target = checkpoint.abstract_like(st, jax.tree.map(lambda a: a.sharding, st))
  assert ck._tree_difference(1, target) is None
  renamed = st.replace(params={"dense": {"w": w["dense"]["kernel"], "bias": w["dense"]["bias"]}})
  target = checkpoint.abstract_like(renamed, jax.tree.map(lambda a: a.sharding, renamed))
  assert "params/dense/w" in ck._tree_difference(1, target)
  ck.close()


def test_leftovers_of_a_killed_save_are_gone_once_the_checkpointer_exists(tmp_path):
  """Orbax cleans them on a background thread; the Checkpointer waits for it, so no read
  races it and no error exit leaves it running into the interpreter's shutdown."""
  from orbax.checkpoint._src.path import atomicity

  d = tmp_path / "ck"
  c = checkpoint.Checkpointer(str(d), keep=2, async_save=False)
  c.save(1, {"w": jnp.ones((2,))}, None, {"a": 1})
  c.close()
  left = d / f"2{atomicity.TMP_DIR_SUFFIX}1234"
  left.mkdir()
  (left / "state").mkdir()
  c = checkpoint.Checkpointer(str(d), keep=2, async_save=False)
  assert not left.exists()
  assert c.steps() == [1]
  c.close()
