"""The NNX networks' functional boundary (vdae/models/network.py): checkpoint names,
no graph traversal per step, and no Flax Linen left in vdae/."""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdae.models.network import Network

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _Block(nnx.Module):
  def __init__(self, ch: int, *, rngs):
    self.norm = nnx.GroupNorm(ch, num_groups=1, rngs=rngs)
    self.proj = nnx.Linear(ch, ch, rngs=rngs)


class _Net(nnx.Module):
  NAMED = ("head",)

  def __init__(self, in_shape, *, width: int, rngs):
    (d,) = in_shape
    self.inp = nnx.Linear(d, width, rngs=rngs)
    self.blocks = nnx.List([_Block(width, rngs=rngs) for _ in range(2)])
    self.head = nnx.Linear(width, 3, rngs=rngs)
    self.mid = nnx.Linear(width, width, rngs=rngs)
    self.out = nnx.Linear(width, d, rngs=rngs)

  def __call__(self, x):
    h = self.inp(x)
    for b in self.blocks:
      h = h + b.proj(b.norm(h))
    return self.out(self.mid(h)), self.head(h)


def test_checkpoint_names_number_each_type_in_attribute_order_and_keep_named_ones():
  params = Network(_Net, width=4).init(jax.random.key(0), (5,))
  shapes = {"/".join(k): v.shape for k, v in _flat(params).items()}
  assert shapes == {
    "Dense_0/kernel": (5, 4),  # inp
    "Dense_0/bias": (4,),
    "_Block_0/GroupNorm_0/scale": (4,),
    "_Block_0/GroupNorm_0/bias": (4,),
    "_Block_0/Dense_0/kernel": (4, 4),
    "_Block_0/Dense_0/bias": (4,),
    "_Block_1/GroupNorm_0/scale": (4,),
    "_Block_1/GroupNorm_0/bias": (4,),
    "_Block_1/Dense_0/kernel": (4, 4),
    "_Block_1/Dense_0/bias": (4,),
    "head/kernel": (4, 3),  # NAMED: not counted among the Dense layers
    "head/bias": (3,),
    "Dense_1/kernel": (4, 4),  # mid
    "Dense_1/bias": (4,),
    "Dense_2/kernel": (4, 5),  # out
    "Dense_2/bias": (5,),
  }


def test_apply_computes_the_module_with_those_parameters():
  net = Network(_Net, width=4)
  params = net.init(jax.random.key(0), (5,))
  x = jax.random.normal(jax.random.key(1), (2, 5))
  module = _Net((5,), width=4, rngs=nnx.Rngs(params=jax.random.key(0)))
  want = module(x)
  got = net.apply(params, x)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  # A changed parameter changes the output: apply reads the tree it is given.
  params["Dense_2"]["bias"] = params["Dense_2"]["bias"] + 1.0
  np.testing.assert_allclose(net.apply(params, x)[0], want[0] + 1.0, rtol=1e-6)


def test_a_jitted_step_merges_the_graph_only_while_it_is_traced(monkeypatch):
  """The graph is split once per shape and merged at trace time: a compiled step does no
  NNX graph work per call (what makes nnx.jit slow on small models)."""
  net = Network(_Net, width=4)
  params = net.init(jax.random.key(0), (5,))
  merges = []
  real_merge = nnx.merge
  monkeypatch.setattr(nnx, "merge", lambda *a, **k: merges.append(1) or real_merge(*a, **k))
  step = jax.jit(lambda p, x: net.apply(p, x)[0].sum())
  x = jnp.ones((2, 5))
  for _ in range(3):
    step(params, x)
  assert len(merges) == 1


def test_networks_with_equal_hyper_parameters_are_equal_and_immutable():
  a, b = Network(_Net, width=4), Network(_Net, width=4)
  assert a == b and hash(a) == hash(b) and a != a.replace(width=8)
  assert a.width == 4
  with pytest.raises(AttributeError, match="immutable"):
    a.width = 8
  with pytest.raises(AttributeError, match="no hyper-parameter 'depth'"):
    _ = a.depth


def test_state_other_than_parameters_is_refused():
  """vdae's state trees hold parameters only (the networks use no BatchNorm)."""

  class WithStats(nnx.Module):
    def __init__(self, in_shape, *, rngs):
      self.bn = nnx.BatchNorm(in_shape[-1], rngs=rngs)

  with pytest.raises(TypeError, match="state other than parameters"):
    Network(WithStats).init(jax.random.key(0), (3,))


def test_vdae_imports_no_flax_linen_and_no_bridge():
  offenders = []
  for path in (ROOT / "vdae").rglob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Attribute) and node.attr == "bridge":
        names = ["nnx.bridge"]
      else:
        continue
      bad = [
        n for n in names if n.startswith(("flax.linen", "flax.nnx.bridge")) or n == "nnx.bridge"
      ]
      offenders += [f"{path.relative_to(ROOT)}: {n}" for n in bad]
  assert not offenders, offenders


def _flat(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def test_a_traced_init_draws_flaxs_keys_and_stages_no_counter_arithmetic():
  """Network.init gives the parameters nnx.Rngs would (the k-th draw of a stream is
  fold_in(key, k)), and traced it stages no uint32 counter update: with flax's counters
  each draw adds one, and JAX 0.10 answers flax's sharding probe of that tracer by walking
  every equation traced so far (quadratic in the draws: network._rngs)."""
  net, key = Network(_Net, width=4), jax.random.key(3)
  want = nnx.to_pure_dict(nnx.state(_Net((5,), width=4, rngs=nnx.Rngs(params=key))))
  got = net.init(key, (5,))
  assert len(_flat(got)) == 16
  # Same arrays, up to the checkpoint names: as multisets of values, each layer's draw.
  leaves = lambda tree: sorted(np.asarray(v).tobytes() for v in jax.tree.leaves(tree))
  assert leaves(got) == leaves(want)
  counter = lambda e: e.primitive.name == "add" and e.outvars[0].aval.dtype == jnp.uint32
  draw = lambda e: e.primitive.name == "random_fold_in"
  ours = jax.make_jaxpr(lambda k: net.init(k, (5,)))(key).eqns
  flaxs = jax.make_jaxpr(lambda k: nnx.state(_Net((5,), width=4, rngs=nnx.Rngs(params=k))))(key)
  draws = sum(map(draw, flaxs.eqns))
  assert draws > 10 and sum(map(counter, flaxs.eqns)) == draws  # flax: an add per draw
  assert sum(map(draw, ours)) == draws and not any(map(counter, ours))


def test_bench_build_times_both_rng_streams(monkeypatch, capsys):
  """vdae/benchmarks/bench_build.py runs (the figure in docs/performance.md is its output)."""
  import sys

  from vdae.benchmarks import bench_build

  monkeypatch.setattr(sys, "argv", ["bench_build", "--config", "digits", "--repeats", "1"])
  bench_build.main()
  out = capsys.readouterr().out
  assert "nnx.Rngs" in out and "network._rngs" in out and out.count("x\n") == 2, out
