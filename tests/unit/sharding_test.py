"""Parameter layout rules and global batches on the 4 forced CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdae.io.errors import ConfigError
from vdae.parallel import sharding


def _mesh(data, fsdp):
  cfg = type("M", (), {"data": data, "fsdp": fsdp})()
  return sharding.make_mesh(cfg)


def test_rules_shard_the_largest_divisible_dim_and_replicate_small_leaves():
  mesh = _mesh(1, 4)
  tree = {
    "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.float32)},
    "bias": jax.ShapeDtypeStruct((64,), jnp.float32),  # < MIN_SHARD_SIZE
    "odd": jax.ShapeDtypeStruct((33, 35), jnp.float32),  # 1155 elements, nothing divides by 4
    "rng": jax.ShapeDtypeStruct((1024, 4), jnp.uint32),  # always replicated
    "head": {"kernel": jax.ShapeDtypeStruct((256, 32), jnp.float32)},
  }
  sh = sharding.state_shardings(tree, mesh, ((r"head", "replicate"), (".*", "fsdp")))
  assert sh["conv"]["kernel"].spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
  assert sh["bias"].spec == jax.sharding.PartitionSpec()
  assert sh["odd"].spec == jax.sharding.PartitionSpec()
  assert sh["rng"].spec == jax.sharding.PartitionSpec()
  assert sh["head"]["kernel"].spec == jax.sharding.PartitionSpec()
  with pytest.raises(ConfigError, match="layout 'rows'"):
    sharding.state_shardings(tree, mesh, ((".*", "rows"),))


def test_global_batch_splits_rows_over_every_device():
  mesh = _mesh(2, 2)
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  g = sharding.global_batch({"x": x}, mesh)["x"]
  assert len(g.addressable_shards) == 4
  assert {s.data.shape for s in g.addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(sharding.to_host(g), x)
  with pytest.raises(ConfigError, match="batch size 6 is not divisible by the 4 devices"):
    sharding.check_batch(6, mesh)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("protocol", ["sample", "mode"])
def test_decoding_splits_the_batch_over_devices_and_matches_one_device(tiny_config, protocol):
  """Evaluation's decodes put each device on its own rows (not a replicated copy of
  the whole batch on every device) and decode what a single device decodes."""
  from vdae.autoencoders.vdae import VDAE
  from vdae.training import stages

  cfg, shape = tiny_config, (8, 8, 1)
  score_params = stages.STAGES["stage1"].init(cfg, shape)(jax.random.key(0))
  enc_params = stages.STAGES["stage2"].init(cfg, shape)(jax.random.key(1))
  # Away from the init, whose zero output layers would decode the same from any code.
  perturb = lambda p, k: jax.tree.map(
    lambda a: a + 0.01 * jax.random.normal(k, a.shape, a.dtype), p
  )
  score_params, enc_params = (
    perturb(score_params, jax.random.key(2)),
    perturb(enc_params, jax.random.key(3)),
  )
  z = np.asarray(jax.random.normal(jax.random.key(4), (8, cfg.encoder.latent_dim)))
  out = {}
  for n in (4, 1):
    mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:n])
    ae = VDAE(cfg, score_params, enc_params, mesh, shape)
    out[n] = ae.decode(z, jax.random.key(5), protocol)
    if n == 4:
      args = (score_params, enc_params, ae._global(z))
      x, _, _ = ae.decoder(8, *ae._method(protocol, None))._init(args, jax.random.key(5), None)
      assert {s.data.shape for s in x.addressable_shards} == {(2, *shape)}
  assert np.all(np.isfinite(out[4]))
  # Equal up to float reassociation (per-device blocks of 2 rows, not 8).
  assert np.abs(out[4] - out[1]).max() <= 1e-4 * max(1.0, np.abs(out[1]).max())
  # (The codes matter: another z decodes to other images.)
  other = ae.decode(z[::-1].copy(), jax.random.key(5), protocol)
  assert np.abs(other - out[1]).max() > 1e-3


def test_batch_from_host_falls_back_to_replicated_when_rows_do_not_split():
  mesh = sharding.make_mesh(type("M", (), {"data": -1, "fsdp": 1})())
  x = np.arange(12.0).reshape(6, 2)  # 6 rows over 4 devices
  a = sharding.batch_from_host(x, mesh)
  assert a.sharding.is_fully_replicated
  b = sharding.batch_from_host(np.arange(16.0).reshape(8, 2), mesh)
  assert {s.data.shape for s in b.addressable_shards} == {(2, 2)}
