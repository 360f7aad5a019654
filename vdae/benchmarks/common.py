"""Shared benchmark plumbing: synthetic 32x32 data, compiled steps; timing and the machine
peak come from vdae/io/timings.py (the product records the same peak)."""

from __future__ import annotations

import os
import tempfile
import time

import jax
import numpy as np

from vdae.data import pipeline
from vdae.io.timings import matmul_peak_flops, median_time  # noqa: F401 (benchmarks use both)
from vdae.parallel import sharding
from vdae.training import loop
from vdae.training import state as state_lib
from vdae.training import step as step_lib


def synthetic_npz(shape=(32, 32, 3), n: int = 512) -> str:
  """A temporary .npz of random uint8 images (the pipeline reads it like user data)."""
  d = tempfile.mkdtemp(prefix="vdae_bench_")
  path = os.path.join(d, "synthetic.npz")
  rng = np.random.default_rng(0)
  np.savez(path, images=rng.integers(0, 256, size=(n, *shape), dtype=np.uint8))
  return path


def compiled_step(t: loop.Trainer):
  """(compiled step, state, stage, FLOPs per step, batch iterator, one global batch) of the
  trainer's stage, built exactly as `Trainer.train` builds it."""
  stage, g, cfg = t.stage, t.stage.group, t.config
  opt, sched = state_lib.make_optimizer(g.lr, g.warmup_steps, g.num_steps, cfg.optim)
  state, shardings = state_lib.create_sharded(
    stage.init_params, opt, cfg.seed, t.mesh, cfg.mesh.param_rules
  )
  step = step_lib.jit_step(
    stage.loss_fn, opt, cfg.loop.ema_decay, shardings, stage.frozen, t.mesh, sched=sched
  )
  it = iter(pipeline.train_dataset(t.splits["train"], cfg.data, g.batch_size, 0, 1))
  batch = sharding.global_batch(next(it), t.mesh)
  watch = step_lib.NonFiniteWatch(t.mesh).arrays
  compiled = step.lower(state, batch, stage.frozen, watch).compile()
  return compiled, state, stage, step_lib.compiled_flops(compiled) or 0.0, it, batch


def time_steps(compiled, state, frozen, batch, repeats: int) -> tuple[float, object]:
  """Median seconds per step (state donated and threaded through)."""
  mesh = batch["image"].sharding.mesh
  holder = {"s": state, "w": step_lib.NonFiniteWatch(mesh).arrays}

  def one():
    holder["s"], m, holder["w"] = compiled(holder["s"], batch, frozen, holder["w"])
    return m["loss"]

  return median_time(one, repeats), holder["s"]


def time_steps_pipelined(compiled, state, frozen, batch, n: int) -> tuple[float, object]:
  """Seconds per step of n steps dispatched back to back and blocked on once, as the
  training loop runs them (the baseline of its overhead; `time_steps` blocks on each)."""
  watch = step_lib.NonFiniteWatch(batch["image"].sharding.mesh).arrays
  state, _, watch = compiled(state, batch, frozen, watch)  # warm
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(n):
    state, _, watch = compiled(state, batch, frozen, watch)
  jax.block_until_ready(state)
  return (time.perf_counter() - t0) / n, state


def pipeline_rate(it, batch_size: int, seconds: float = 3.0) -> float:
  """Examples/s the Grain pipeline delivers on its own (host side only)."""
  n, t0 = 0, time.perf_counter()
  while time.perf_counter() - t0 < seconds:
    next(it)
    n += batch_size
  return n / (time.perf_counter() - t0)
