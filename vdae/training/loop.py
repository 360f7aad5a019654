"""The one training loop (`Trainer`) and its periodic hooks: order of things, nothing else.

A stage (a `stages.Stage` built on a run's context) supplies what to initialise, the
loss, the frozen inputs, the pictures and the metadata of its checkpoints; its config
group supplies the sizes (schema.STAGE_FIELDS). The `Trainer` runs it: sharded state
creation, resume, the jitted step, and after every step the hooks in order: progress,
scalars, pictures, checkpoint, preemption. The mesh and the data splits come with the
stage's context.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax

from vdae.data import pipeline
from vdae.io import files, writer
from vdae.io.errors import NonFiniteError
from vdae.parallel import sharding
from vdae.training import checkpoint, eta, restore
from vdae.training import state as state_lib
from vdae.training import step as step_lib
from vdae.training.preemption import Preemption

if TYPE_CHECKING:
  from vdae.training.stages import Stage

log = logging.getLogger(__name__)


# --- hooks ---------------------------------------------------------------------------
class FiniteGuard:
  """Raises under `on_nonfinite=stop` once any step so far was skipped as non-finite."""

  def __init__(self, name: str, policy: str, watch: step_lib.NonFiniteWatch, ckpt):
    self.name, self.policy, self.watch, self.ckpt = name, policy, watch, ckpt

  def check(self) -> int:
    """How many steps were skipped (a host sync); raises NonFiniteError under `stop`."""
    first, count = self.watch.read()
    if count and self.policy == "stop":
      self.ckpt.wait()
      raise NonFiniteError(
        f"{self.name}: non-finite loss or gradient at step {first}. The update was not "
        f"applied; the last good checkpoint is step {self.ckpt.latest_step()}. Lower the "
        f"stage's lr, check the data, or set loop.on_nonfinite=skip."
      )
    return count


class Hook:
  """Runs after a step; `close` at the end of the loop, however it ends."""

  def after_step(self, step: int, state, metrics: dict, last: bool) -> None:
    raise NotImplementedError

  def close(self) -> None:
    pass


class ProgressHook(Hook):
  def __init__(self, start: int, total: int, desc: str):
    from tqdm import tqdm

    self.bar = tqdm(
      total=total,
      initial=start,
      desc=desc,
      disable=jax.process_index() != 0,
      dynamic_ncols=True,
      mininterval=2.0,
    )

  def after_step(self, step, state, metrics, last):
    self.bar.update(1)

  def close(self):
    self.bar.close()


class EtaHook(Hook):
  """Logs the stage's expected wall time once, after its first steps past the compile.
  `clock()` is the seconds since the step was compiled; reading the rate blocks once on
  the step's outputs, so what is timed is computed, not only dispatched."""

  def __init__(self, name: str, start: int, num_steps: int, clock: Callable[[], float]):
    self.name, self.start, self.num_steps, self.clock = name, start, num_steps, clock
    todo = num_steps - start
    self.at = start + min(eta.TIMED_STEPS, max(2, todo // 4)) if todo >= 4 else None

  def after_step(self, step, state, metrics, last) -> None:
    if step != self.at or last:
      return
    jax.block_until_ready(metrics)
    for level, line in eta.estimate_lines(
      self.name, step - self.start, self.clock(), self.num_steps - step
    ):
      log.log(level, line)


class ScalarsHook(Hook):
  """train/ and perf/ scalars every `every` steps: the only per-step host sync.
  perf/loop_seconds is this run's time since its first step was compiled (what
  quality-against-wall-time figures read)."""

  def __init__(self, every, tb, guard, batch_size, flops_fn, start, progress, clock):
    self.every, self.tb, self.guard = every, tb, guard
    self.batch_size, self.flops_fn, self.progress = batch_size, flops_fn, progress
    self.clock = clock
    self.last_t, self.last_step = time.perf_counter(), start

  def after_step(self, step, state, metrics, last):
    if not (step % self.every == 0 or last):
      return
    m = jax.device_get(metrics)
    m["nonfinite_steps"] = self.guard.check()
    now = time.perf_counter()
    sps = (step - self.last_step) / (now - self.last_t)
    self.last_t, self.last_step = now, step
    scalars = {f"train/{k}": v for k, v in m.items()}
    scalars.update(
      {
        "perf/steps_per_sec": sps,
        "perf/examples_per_sec": sps * self.batch_size,
        "perf/loop_seconds": self.clock(),
      }
    )
    flops = self.flops_fn()
    if flops:
      scalars["perf/flops_per_sec_per_device"] = sps * flops / jax.device_count()
    self.tb.scalars(step, scalars)
    self.progress.bar.set_postfix(loss=f"{m['loss']:.4g}")


class ProfileHook(Hook):
  """A jax.profiler trace of steps first..last (loop.profile_steps), written where
  TensorBoard's profile plugin reads it: its logdir/plugins/profile/<time>/."""

  def __init__(self, steps, logdir: str, start: int):
    self.first, self.last = (tuple(steps) or (0, -1))[:2]
    self.logdir, self.on = logdir, False
    if self.first == start + 1 <= self.last:  # the trace starts before the step it covers
      self._start()

  def _start(self):
    jax.profiler.start_trace(self.logdir)
    self.on = True

  def after_step(self, step, state, metrics, last):
    if step + 1 == self.first and not last:
      self._start()
    elif self.on and (step >= self.last or last):
      jax.block_until_ready(state)  # the traced steps' device work ends inside the trace
      self.close()
      log.info("profile of steps %d-%d written under %s", self.first, step, self.logdir)

  def close(self):
    if self.on:
      jax.profiler.stop_trace()
      self.on = False


class ImagesHook(Hook):
  def __init__(self, every, tb, images):
    self.every, self.tb, self.images = every, tb, images

  def after_step(self, step, state, metrics, last):
    if self.images and self.every and step % self.every == 0:
      for tag, ims in self.images(state, step).items():
        self.tb.image(step, tag, ims)


class CheckpointHook(Hook):
  """Saves every `every` steps and at the end; `save` is once per step."""

  def __init__(self, every, ckpt, guard, data_iter, meta):
    self.every, self.ckpt, self.guard, self.it, self.meta = every, ckpt, guard, data_iter, meta
    self.saved_step = None

  def save(self, step: int, state) -> None:
    if self.saved_step == step:  # a second save of the same step is an Orbax error
      return
    self.guard.check()
    self.ckpt.save(step, state, self.it, self.meta, force=True)
    self.saved_step = step

  def after_step(self, step, state, metrics, last):
    if step % self.every == 0 or last:
      self.save(step, state)


class PreemptionHook(Hook):
  """On a preemption notice: save this step (if not saved), wait, exit 143."""

  def __init__(self, name, ckpt_hook: CheckpointHook, start: int):
    self.name, self.ckpt_hook = name, ckpt_hook
    self.preempt = Preemption()
    self.preempt.reached(start)  # report our step before the long compile (see Preemption)

  def after_step(self, step, state, metrics, last):
    if self.preempt.reached(step):
      self.ckpt_hook.save(step, state)
      self.ckpt_hook.ckpt.wait()
      log.warning("%s: preempted; checkpoint saved at step %d", self.name, step)
      raise SystemExit(143)

  def close(self):
    self.preempt.close()


# --- the loop ------------------------------------------------------------------------
class Trainer:
  """Runs one stage to its num_steps, resuming from WORKDIR/<name>/checkpoints."""

  def __init__(self, stage: Stage):
    ctx = stage.ctx
    self.stage, self.config, self.workdir, self.mesh, self.splits = (
      stage,
      ctx.config,
      ctx.workdir,
      ctx.mesh,
      ctx.splits,
    )
    self.image_shape = tuple(ctx.image_shape)
    # What the last train() measured: compile_seconds, steps, loop_seconds (from the
    # compiled step's first call until the last step's result is ready: every step's
    # data, device work and hooks but the last step's, i.e. the final save).
    self.stats: dict[str, float] = {}
    files.ensure_writable_dir(self.workdir)

  @property
  def stage_dir(self) -> str:
    return os.path.join(self.workdir, self.stage.name)

  def meta(self) -> dict:
    return {
      "stage": self.stage.name,
      "config": restore.config_json(self.config),
      "image_shape": list(self.image_shape),
      "versions": checkpoint.package_versions(),
      **self.stage.meta,
    }

  def _resume(self, ckpt, state, shardings, it):
    if ckpt.latest_step() is None:
      return state
    restore.check_meta(
      ckpt.read_meta(),
      self.config,
      self.stage.compare_keys,
      self.image_shape,
      f"{self.stage_dir}/checkpoints",
      "Resume with the original config, or use a new --workdir.",
    )
    step0, state = ckpt.restore(checkpoint.abstract_like(state, shardings), it)
    log.info("%s: resumed from step %d", self.stage.name, step0)
    return state

  def _compile(self, step_fn, state, batch, watch, tb, step):
    """The train step compiled for this state's and batch's shapes and shardings, before
    the loop runs it; returns it with XLA's FLOPs a step."""
    t0 = time.perf_counter()
    fn = step_fn.lower(state, batch, self.stage.frozen, watch.arrays).compile()
    seconds = time.perf_counter() - t0  # small when the persistent cache had it
    log.info("%s: train step compiled in %.1f s", self.stage.name, seconds)
    tb.scalars(step, {"perf/compile_seconds": seconds})
    self.stats = {"compile_seconds": seconds}
    return fn, step_lib.compiled_flops(fn)

  def train(self):
    stage, g, cfg, lp = self.stage, self.stage.group, self.config, self.config.loop
    sharding.check_batch(g.batch_size, self.mesh)
    opt, sched = state_lib.make_optimizer(g.lr, g.warmup_steps, g.num_steps, cfg.optim)
    state, shardings = state_lib.create_sharded(
      stage.init_params, opt, cfg.seed, self.mesh, cfg.mesh.param_rules
    )
    it = iter(
      pipeline.train_dataset(
        self.splits["train"], cfg.data, g.batch_size, jax.process_index(), jax.process_count()
      )
    )
    ckpt = checkpoint.Checkpointer(
      os.path.join(self.stage_dir, "checkpoints"),
      keep=lp.keep_checkpoints,
      async_save=lp.async_checkpointing,
    )
    hooks: list[Hook] = []
    tb = None
    try:
      state = self._resume(ckpt, state, shardings, it)
      start = int(state.step)
      step_fn = step_lib.jit_step(
        stage.loss_fn, opt, lp.ema_decay, shardings, stage.frozen, self.mesh, sched=sched
      )
      tb_dir = os.path.join(self.workdir, "tensorboard", stage.name)
      tb = writer.Writer(tb_dir)
      if start == 0:
        tb.text(0, "config", "```\n" + cfg.to_json_best_effort(indent=2) + "\n```")
      watch = step_lib.NonFiniteWatch(self.mesh)
      guard = FiniteGuard(stage.name, lp.on_nonfinite, watch, ckpt)
      fn, flops, first, t_loop = None, None, None, time.perf_counter()
      if start < g.num_steps:
        first = sharding.global_batch(next(it), self.mesh)
        fn, flops = self._compile(step_fn, state, first, watch, tb, start + 1)
        t_loop = time.perf_counter()
      progress = ProgressHook(start, g.num_steps, stage.name)
      ckpt_hook = CheckpointHook(g.checkpoint_every, ckpt, guard, it, self.meta())
      clock = lambda: time.perf_counter() - t_loop
      hooks = [
        progress,
        ScalarsHook(g.log_every, tb, guard, g.batch_size, lambda: flops, start, progress, clock),
        EtaHook(stage.name, start, g.num_steps, clock),
        ImagesHook(g.image_every, tb, stage.images),
        ProfileHook(lp.profile_steps, tb_dir, start),
        ckpt_hook,
        PreemptionHook(stage.name, ckpt_hook, start),
      ]
      for step in range(start + 1, g.num_steps + 1):
        batch = first if step == start + 1 else sharding.global_batch(next(it), self.mesh)
        state, metrics, watch.arrays = fn(state, batch, stage.frozen, watch.arrays)
        if step == g.num_steps and self.stats:  # before the final save and scalars
          jax.block_until_ready(state)
          self.stats.update(steps=step - start, loop_seconds=time.perf_counter() - t_loop)
        for h in hooks:
          h.after_step(step, state, metrics, step == g.num_steps)
    finally:
      for h in hooks:
        h.close()
      ckpt.close()
      if tb is not None:
        tb.close()
    return state
