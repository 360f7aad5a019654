"""Cost of a checkpoint save, async vs blocking, for the digits and CIFAR-10 states.

What the training loop saves (train state: params, Adam moments, EMA, step,
rng; the Grain iterator position; the run metadata) through vdae/training/checkpoint.py:

  async     time until save() returns and the loop can take its next step
            (device-to-host copy; the write goes on in a background thread),
            and time until the checkpoint is committed (renamed into place)
  blocking  time until save() returns, which is when it is committed

The CIFAR-10 state is configs/cifar10.py's model (DDPM++ scale) filled with
random values: its init is not compiled, only its shapes are used.

  python -m vdae.benchmarks.bench_checkpoint [--repeats 3] [--only digits|cifar10] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import jax
import numpy as np

from configs import cifar10, digits
from vdae.benchmarks import common
from vdae.data import pipeline
from vdae.parallel import runtime, sharding
from vdae.training import checkpoint, stages
from vdae.training import state as state_lib


def configs(only: str | None):
  if only in (None, "digits"):
    yield "digits", digits.get_config()
  if only in (None, "cifar10"):
    c = cifar10.get_config()
    c.data.source = "npz"  # same 32x32x3 shapes without the ArrayRecord files
    c.data.path = common.synthetic_npz((32, 32, 3), n=64)
    c.data.random_flip = False
    yield "cifar10", c


def random_state(cfg, workdir: str):
  """(train state with random values, laid out by the config's rules, data iterator)."""
  t = stages.trainer("stage1", cfg, workdir)
  g = t.stage.group
  opt, _ = state_lib.make_optimizer(g.lr, g.warmup_steps, g.num_steps, cfg.optim)
  abstract = state_lib.abstract_state(t.stage.init_params, opt)
  shardings = sharding.state_shardings(abstract, t.mesh, cfg.mesh.param_rules)
  rng = np.random.default_rng(0)

  def fill(a, s):
    if np.issubdtype(a.dtype, np.floating):
      host = rng.standard_normal(a.shape, dtype=np.float32).astype(a.dtype)
    else:
      host = np.zeros(a.shape, a.dtype)
    return jax.device_put(host, s)

  state = jax.tree.map(fill, abstract, shardings)
  it = iter(pipeline.train_dataset(t.splits["train"], cfg.data, g.batch_size, 0, 1))
  next(it)
  return state, it, t.meta()


def time_saves(state, it, meta, directory: str, async_save: bool, repeats: int):
  """Median (seconds until save() returns, seconds until committed)."""
  ck = checkpoint.Checkpointer(directory, keep=repeats + 2, async_save=async_save)
  returned, committed = [], []
  try:
    for step in range(repeats + 1):  # step 0: directory creation and first-call costs
      jax.block_until_ready(state)
      t0 = time.perf_counter()
      ck.save(step, state, it, meta, force=True)
      t1 = time.perf_counter()
      ck.wait()
      t2 = time.perf_counter()
      if step:
        returned.append(t1 - t0)
        committed.append(t2 - t0)
  finally:
    ck.close()
  return statistics.median(returned), statistics.median(committed)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--only", choices=("digits", "cifar10"), default=None)
  ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
  args = ap.parse_args()
  print(
    f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
    f"median of {args.repeats} saves"
  )
  print(
    f"{'state':8s} {'MB':>8s} {'async: loop blocked':>20s} {'async: committed':>17s} "
    f"{'blocking':>9s} {'blocking / async-blocked':>25s}"
  )
  for name, cfg in configs(args.only):
    root = tempfile.mkdtemp(prefix="vdae_bench_ckpt_", dir=args.dir)
    try:
      state, it, meta = random_state(cfg, os.path.join(root, "run"))
      mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
      a_ret, a_done = time_saves(state, it, meta, os.path.join(root, "async"), True, args.repeats)
      b_ret, _ = time_saves(state, it, meta, os.path.join(root, "blocking"), False, args.repeats)
      print(
        f"{name:8s} {mb:8.1f} {a_ret:19.3f}s {a_done:16.3f}s {b_ret:8.3f}s {b_ret / a_ret:24.1f}x"
      )
    finally:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
