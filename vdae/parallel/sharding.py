"""Device mesh, parameter layout rules, and global batches from per-process data.

The mesh has two axes, `data` and `fsdp`. Batches are split over both (every
device sees a distinct slice); parameters, optimizer state and EMA follow the
config's rules: "fsdp" shards a leaf's largest dimension divisible by the fsdp
axis size (ZeRO-3 style; XLA inserts the all-gathers), "replicate" keeps a copy
per device. Rules are (regex over the "/"-joined parameter path, layout) pairs;
the first match wins.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vdae.io.errors import ConfigError

BATCH_AXES = ("data", "fsdp")
# Leaves smaller than this stay replicated: sharding a bias saves nothing and
# costs a collective per use. RNG keys and counters are always replicated.
MIN_SHARD_SIZE = 1024
ALWAYS_REPLICATED = ("rng", "step")


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh of shape (data, fsdp) from the config; -1 takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, fsdp = int(mesh_cfg.data), int(mesh_cfg.fsdp)
  if (data == -1) + (fsdp == -1) > 1:
    raise ConfigError("mesh: at most one of mesh.data, mesh.fsdp may be -1.")
  known = (data if data != -1 else 1) * (fsdp if fsdp != -1 else 1)
  if known <= 0 or n % known:
    raise ConfigError(
      f"mesh (data={data}, fsdp={fsdp}) does not fit the {n} available devices: "
      f"the product of the axis sizes must divide {n}. Set --config.mesh.data / mesh.fsdp."
    )
  data = n // known if data == -1 else data
  fsdp = n // known if fsdp == -1 else fsdp
  if data * fsdp != n:
    raise ConfigError(
      f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but {n} are available. "
      "Use -1 for one axis to take the rest."
    )
  # make_mesh orders devices for the physical topology (ICI rings on TPU).
  # Auto axes: XLA's partitioner propagates shardings from the jit boundary
  # (pjit style); Explicit axes would demand out_sharding on every op.
  return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def _leaf_spec(shape: tuple[int, ...], layout: str, fsdp_size: int) -> P:
  if layout == "replicate" or fsdp_size == 1 or not shape:
    return P()
  if math.prod(shape) < MIN_SHARD_SIZE:
    return P()
  if layout != "fsdp":
    raise ConfigError(f"mesh.param_rules: layout {layout!r} is not fsdp or replicate.")
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()  # nothing divides: small leaves stay replicated


def state_shardings(abstract_state, mesh: Mesh, rules: Sequence[tuple[str, str]]):
  """NamedShardings for every leaf of an (abstract) state pytree, by the rules."""
  compiled = [(re.compile(pat), layout) for pat, layout in rules]
  fsdp_size = mesh.shape["fsdp"]

  def one(path, leaf):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    layout = next((lay for rx, lay in compiled if rx.search(name)), "replicate")
    if name.split("/")[0] in ALWAYS_REPLICATED:
      layout = "replicate"
    return NamedSharding(mesh, _leaf_spec(tuple(leaf.shape), layout, fsdp_size))

  return jax.tree_util.tree_map_with_path(one, abstract_state)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading axis over every device, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's contiguous block of rows."""
  return {
    k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), np.asarray(v))
    for k, v in local.items()
  }


def replicated_from_host(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array that every process holds whole, as one replicated global array."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, replicated(mesh), lambda i: x[i])


def batch_from_host(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array that every process holds whole, as one global array whose leading
  axis is split over the batch axes (each device computes its rows), or replicated
  when that axis does not divide evenly."""
  x = np.asarray(x)
  if x.ndim == 0 or x.shape[0] % batch_size_divisor(mesh):
    return replicated_from_host(x, mesh)
  return jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim), lambda i: x[i])


def batch_size_divisor(mesh: Mesh) -> int:
  """How many ways the batch axes split a batch."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def constrain_batch(tree, mesh: Mesh | None, batch: int):
  """Inside jit: every array of `tree` whose leading axis is `batch` laid out over the
  batch axes (when they divide it), the rest left to XLA."""
  if mesh is None or batch % batch_size_divisor(mesh):
    return tree

  def one(a):
    if getattr(a, "ndim", 0) and a.shape[0] == batch:
      return jax.lax.with_sharding_constraint(a, batch_sharding(mesh, a.ndim))
    return a

  return jax.tree.map(one, tree)


def to_host(x: jax.Array) -> np.ndarray:
  """The whole of a (possibly multi-process) array as numpy, on every process.

  With several processes a sharded array spans devices this process cannot
  read, so np.asarray fails; every process must then call this (it gathers).
  """
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  from jax.experimental import multihost_utils

  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def check_batch(global_batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ConfigError(
      f"batch size {global_batch_size} is not divisible by the {n} devices of the mesh. "
      f"Use a multiple of {n}."
    )
