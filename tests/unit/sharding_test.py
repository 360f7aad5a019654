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
