"""A Flax NNX network as pure functions of its parameters: vdae's boundary at `jax.jit`.

vdae's steps are pure functions under `jax.jit` with explicit shardings and donation, and
its state (TrainState, the EMA, Orbax checkpoints, the sharding rules) is a plain nested
dict of arrays. A `Network` holds a network's hyper-parameters; for an input shape it
builds the `nnx.Module` once, abstractly, and keeps its static graph (`nnx.split`), so a
step only merges graph and parameters while it is traced (`nnx.merge`): there is no graph
traversal per call, which is what makes `nnx.jit` slow on small models (flax's
performance guide).

Parameter names. The tree is named the way vdae's checkpoints have always been named
(the names Flax Linen gave): a module's child modules are numbered per type in the order
of its attributes (`ResBlock_2/Conv_1/kernel`; `nnx.Linear` is `Dense`,
`nnx.MultiHeadAttention` is `MultiHeadDotProductAttention`), except the attributes a module
lists in `NAMED` (or all of them, `NAMED = ALL`, and every module of flax's own), which keep
their names, an `nnx.List`'s items as `name_i`. So a module's attributes of one type are
declared in the order its checkpoints number them, and every checkpoint, written before
or after the move to NNX, reads with the same names
(tests/integration/old_workdir_test.py holds one written by the Linen networks).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx, traverse_util

ALL = "all"  # a module's NAMED: every attribute keeps its name
_TYPE_NAMES = {nnx.Linear: "Dense", nnx.MultiHeadAttention: "MultiHeadDotProductAttention"}


class Network:
  """The hyper-parameters of an NNX module, and the module as pure functions.

  `module(in_shape, **hparams, rngs=...)` (its class, or a function) builds the network for
  inputs of `in_shape` (one example's shape). Hyper-parameters read as attributes
  (`net.latent_dim`); two Networks of the same module and hyper-parameters are equal (jit
  caches by them)."""

  def __init__(self, module: Callable[..., nnx.Module], **hparams):
    self.__dict__["module"] = module
    self.__dict__["hparams"] = hparams

  def __getattr__(self, name: str):
    try:
      return self.__dict__["hparams"][name]
    except KeyError:
      raise AttributeError(f"{self.module.__name__} has no hyper-parameter {name!r}") from None

  def __setattr__(self, name, value):
    raise AttributeError("a Network is immutable: use replace(**changes)")

  def replace(self, **changes) -> Network:
    return Network(self.module, **{**self.hparams, **changes})

  def _key(self) -> tuple:
    return (self.module, tuple(sorted(self.hparams.items())))

  def __eq__(self, other) -> bool:
    return isinstance(other, Network) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
    return f"Network({self.module.__name__}, {args})"

  def build(self, in_shape: tuple[int, ...], rngs: nnx.Rngs) -> nnx.Module:
    return self.module(tuple(in_shape), **self.hparams, rngs=rngs)

  def init(self, key: jax.Array, in_shape: tuple[int, ...]) -> dict:
    """Fresh parameters (a nested dict under the checkpoint names)."""
    names = _graph(self, tuple(in_shape))[1]
    state = nnx.state(self.build(in_shape, _rngs(params=key)))
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return traverse_util.unflatten_dict({names[p]: v for p, v in flat.items()})

  def bind(self, params: dict, in_shape: tuple[int, ...]) -> nnx.Module:
    """The module holding `params`: inside a traced function, this costs tracing only."""
    graphdef, names = _graph(self, tuple(in_shape))
    flat = traverse_util.flatten_dict(params)
    state = traverse_util.unflatten_dict({p: flat[n] for p, n in names.items()})
    return nnx.merge(graphdef, state)

  def apply(self, params: dict, x: jax.Array, *args, rngs=None, **kwargs):
    """The module's output on `x` [B, ...] (and the call's other arguments); rngs: a dict
    of keys by stream (`{"dropout": key}`), for the modules that draw."""
    module = self.bind(params, x.shape[1:])
    if rngs:
      kwargs["rngs"] = _rngs(**rngs)
    return module(x, *args, **kwargs)


def _rngs(**streams) -> nnx.Rngs:
  """nnx.Rngs whose draw counters are host numbers, not arrays: the same keys (the k-th
  draw of a stream is fold_in(key, k)), but a traced build or step stages no counter
  arithmetic. Flax's Variable.set_value probes `.sharding` on each new counter value, and
  on a tracer JAX 0.10 answers with an error message that walks every equation traced so
  far: quadratic in the number of draws (the cifar10 U-Net's abstract build 4.6 s against
  0.8 s this way). Each read is a copy, because a traced draw keeps the value it read."""
  out = nnx.Rngs(**streams)
  for _, stream in out.items():
    stream.count.set_raw_value(np.zeros(np.shape(stream.count.get_raw_value()), np.uint32))
    stream.count.set_metadata(on_get_value=lambda _, count: np.array(count))
  return out


@functools.lru_cache(maxsize=256)
def _graph(net: Network, in_shape: tuple[int, ...]):
  """(graphdef, {state path: checkpoint path}) of `net` for inputs of `in_shape`."""
  names = {}

  def build():
    module = net.build(in_shape, _rngs(params=0))
    # Named while the module is live: a rebuilt (abstract) module's attributes are sorted.
    names.update(checkpoint_names(module))
    return module

  graphdef, state = nnx.split(nnx.eval_shape(build))
  paths = set(traverse_util.flatten_dict(nnx.to_pure_dict(state)))
  if paths != set(names):
    raise TypeError(f"{net}: state other than parameters: {sorted(paths - set(names))[:3]}")
  return graphdef, names


def checkpoint_names(module: nnx.Module) -> dict[tuple, tuple]:
  """{path in the module's state: path in the checkpoint's parameter tree} (module doc)."""
  out: dict[tuple, tuple] = {}

  def walk(m, src: tuple, dst: tuple):
    named = ALL if type(m).__module__.startswith("flax.") else getattr(m, "NAMED", ())
    counts: collections.Counter = collections.Counter()
    for attr, value in vars(m).items():
      items = list(enumerate(value)) if isinstance(value, nnx.List) else [(None, value)]
      for i, child in items:
        s = src + (attr,) + (() if i is None else (i,))
        if isinstance(child, nnx.Param):
          out[s] = dst + (attr,)
        elif isinstance(child, nnx.Module):
          if named == ALL or attr in named:
            d = attr if i is None else f"{attr}_{i}"
          else:
            kind = _TYPE_NAMES.get(type(child), type(child).__name__)
            d = f"{kind}_{counts[kind]}"
            counts[kind] += 1
          walk(child, s, dst + (d,))

  walk(module, (), ())
  return out
