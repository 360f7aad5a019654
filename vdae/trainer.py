"""The training loop shared by both stages: order of things, nothing else.

A `Trainer` subclass owns its model, loss and pictures (`build`, `images`);
this base owns the step, sharding, checkpoints, logging, preemption and the
loop. The step is a pure function jitted once with explicit shardings and the
state donated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdae import checkpoint, data, restore, runtime, sharding, train_state, writer
from vdae.errors import NonFiniteError, WorkdirError

log = logging.getLogger(__name__)

# loss_fn(params, batch, key, frozen) -> (loss [], aux {name: []})
LossFn = Callable[[Any, dict, jax.Array, Any], tuple[jax.Array, dict]]


@dataclasses.dataclass
class StageSpec:
  """What a stage trains: built by the subclass, run by the base."""

  init_params: Callable[[jax.Array], Any]
  loss_fn: LossFn
  lr: float
  warmup: int
  num_steps: int
  batch_size: int
  log_every: int
  image_every: int
  checkpoint_every: int
  frozen: Any = None  # closed-over model, passed as an argument, never optimised


def train_step(state, batch, frozen, *, loss_fn, opt, ema_decay):
  """One optimizer step. Non-finite loss or gradients leave the state untouched
  (and raise the `nonfinite` metric) so a bad batch can never poison params."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key, frozen)
  gnorm = optax.tree.norm(grads)
  updates, opt_state = opt.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # Warm the EMA up (TF's num_updates rule): a plain 0.999 EMA after 1.5k
  # steps still holds 22% of the initial (zero-output) network.
  decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
  ema = optax.incremental_update(params, state.ema_params, 1.0 - decay)
  ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
  keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
  new_state = state.replace(
    step=state.step + 1,
    params=keep(params, state.params),
    opt_state=keep(opt_state, state.opt_state),
    ema_params=keep(ema, state.ema_params),
  )
  metrics = {"loss": loss, "grad_norm": gnorm, "nonfinite": (~ok).astype(jnp.float32), **aux}
  return new_state, metrics


@jax.jit
def _note_nonfinite(first_bad, count, nonfinite, step):
  """On device, without a host sync: the first step whose update was skipped
  (0 if none) and how many were."""
  bad = nonfinite > 0
  first_bad = jnp.where((first_bad == 0) & bad, step, first_bad)
  return first_bad, count + bad.astype(count.dtype)


class NonFiniteWatch:
  """Remembers every skipped (non-finite) step between the loop's host syncs,
  so `on_nonfinite=stop` stops on a one-off bad step too, not only on one that
  falls on a log or checkpoint step."""

  def __init__(self, mesh):
    rep = sharding.replicated(mesh)
    self._first = jax.device_put(jnp.zeros((), jnp.int32), rep)
    self._count = jax.device_put(jnp.zeros((), jnp.int32), rep)

  def update(self, metrics: dict, step: int) -> None:
    self._first, self._count = _note_nonfinite(
      self._first, self._count, metrics["nonfinite"], jnp.int32(step)
    )

  def read(self) -> tuple[int, int]:
    """(first skipped step or 0, number of skipped steps): a host sync."""
    first, count = jax.device_get((self._first, self._count))
    return int(first), int(count)


def ensure_workdir(path: str) -> None:
  if path.startswith("gs://"):
    return  # object stores have no directories to create
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_probe_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
      f"workdir {path!r} is not writable ({e.strerror}). Pick another --workdir."
    ) from e


class Trainer:
  """Base of the stage trainers (vdm's Experiment pattern)."""

  stage = "stage"  # subclass: directory / TensorBoard run name
  compare_keys: tuple[str, ...] = ("model", "sde")  # must match to resume

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    ensure_workdir(workdir)
    self.mesh = sharding.make_mesh(config.mesh)
    self.splits = data.load_splits(config.data)
    self.image_shape = tuple(self.splits["train"].image_shape)

  # --- subclass hooks ------------------------------------------------------------
  def build(self) -> StageSpec:
    raise NotImplementedError

  def images(self, state, step: int) -> dict[str, np.ndarray]:
    """{tag: [N, H, W, C] in [-1, 1]} for TensorBoard at image steps."""
    del state, step
    return {}

  def meta(self) -> dict:
    return {
      "stage": self.stage,
      "config": restore.config_json(self.config),
      "image_shape": list(self.image_shape),
      "versions": checkpoint.package_versions(),
    }

  # --- shared pieces -------------------------------------------------------------
  @property
  def stage_dir(self) -> str:
    return os.path.join(self.workdir, self.stage)

  def checkpointer(self) -> checkpoint.Checkpointer:
    t = self.config.training
    return checkpoint.Checkpointer(
      os.path.join(self.stage_dir, "checkpoints"),
      keep=t.keep_checkpoints,
      async_save=t.async_checkpointing,
    )

  def check_resumable(self, meta: dict) -> None:
    """The checkpoint must come from the same stage config and image shape."""
    restore.check_meta(
      meta,
      self.config,
      self.compare_keys,
      self.image_shape,
      f"{self.stage_dir}/checkpoints",
      "Resume with the original config, or use a new --workdir.",
    )

  def jit_step(self, spec: StageSpec, opt, shardings):
    """The step, jitted with explicit in/out shardings and the state donated."""
    frozen_sh = jax.tree.map(lambda x: x.sharding, spec.frozen)
    batch_sh = {
      k: sharding.batch_sharding(self.mesh, 4 if k == "image" else 1)
      for k in ("image", "label", "index")
    }
    return jax.jit(
      lambda s, b, f: train_step(s, b, f, loss_fn=spec.loss_fn, opt=opt, ema_decay=self.ema_decay),
      in_shardings=(shardings, batch_sh, frozen_sh),
      out_shardings=(shardings, sharding.replicated(self.mesh)),
      donate_argnums=0,
    )

  # --- the loop --------------------------------------------------------------------
  def train(self):
    spec = self.build()
    cfg = self.config
    sharding.check_batch(spec.batch_size, self.mesh)
    opt, sched = train_state.make_optimizer(spec.lr, spec.warmup, spec.num_steps, self.optim_cfg)
    state, shardings = train_state.create_sharded(
      spec.init_params, opt, cfg.seed, self.mesh, cfg.mesh.param_rules
    )
    ds = data.train_dataset(
      self.splits["train"], cfg.data, spec.batch_size, jax.process_index(), jax.process_count()
    )
    it = iter(ds)
    ckpt = self.checkpointer()
    if ckpt.latest_step() is not None:
      self.check_resumable(ckpt.read_meta())
      step0, state = ckpt.restore(checkpoint.abstract_like(state, shardings), it)
      log.info("%s: resumed from step %d", self.stage, step0)
    start = int(state.step)

    step_fn = self.jit_step(spec, opt, shardings)
    tb = writer.Writer(os.path.join(self.workdir, "tensorboard", self.stage))
    if start == 0:
      tb.text(0, "config", "```\n" + cfg.to_json_best_effort(indent=2) + "\n```")
    preempt = runtime.Preemption()
    preempt.reached(start)  # report our step before the long compile (see Preemption)
    flops, compiled = None, None
    last_t, last_step = time.perf_counter(), start
    bar = _progress(start, spec.num_steps, self.stage)
    watch = NonFiniteWatch(self.mesh)
    step = start
    try:
      for step in range(start + 1, spec.num_steps + 1):
        batch = sharding.global_batch(next(it), self.mesh)
        if compiled is None:
          compiled = step_fn.lower(state, batch, spec.frozen).compile()
          flops = compiled_flops(compiled)
        state, metrics = compiled(state, batch, spec.frozen)
        watch.update(metrics, step)
        bar.update(1)
        if step % spec.log_every == 0 or step == spec.num_steps:
          m = jax.device_get(metrics)
          m["nonfinite_steps"] = self._check_finite(watch, ckpt)
          now = time.perf_counter()
          sps = (step - last_step) / (now - last_t)
          last_t, last_step = now, step
          scalars = {f"train/{k}": v for k, v in m.items()}
          scalars.update(
            {
              "train/lr": float(sched(step)),
              "perf/steps_per_sec": sps,
              "perf/examples_per_sec": sps * spec.batch_size,
            }
          )
          if flops:
            scalars["perf/flops_per_sec_per_device"] = sps * flops / jax.device_count()
          tb.scalars(step, scalars)
          bar.set_postfix(loss=f"{m['loss']:.4g}")
        if spec.image_every and step % spec.image_every == 0:
          for tag, ims in self.images(state, step).items():
            tb.image(step, tag, ims)
        saved = False
        if step % spec.checkpoint_every == 0 or step == spec.num_steps:
          self._check_finite(watch, ckpt)
          saved = ckpt.save(step, state, it, self.meta(), force=True)
        if preempt.reached(step):
          if not saved:  # a second save of the same step is an Orbax error
            self._check_finite(watch, ckpt)
            ckpt.save(step, state, it, self.meta(), force=True)
          ckpt.wait()
          log.warning("%s: preempted; checkpoint saved at step %d", self.stage, step)
          raise SystemExit(143)
    finally:
      bar.close()
      ckpt.close()
      tb.close()
      preempt.close()
    return state

  optim_cfg = property(lambda self: self.config.optim)
  ema_decay = property(lambda self: self.config.training.ema_decay)

  def _check_finite(self, watch: NonFiniteWatch, ckpt) -> int:
    """Raises under `on_nonfinite=stop` if any step so far was skipped as
    non-finite; returns how many were."""
    first, count = watch.read()
    if count and self.config.training.on_nonfinite == "stop":
      ckpt.wait()
      raise NonFiniteError(
        f"{self.stage}: non-finite loss or gradient at step {first}. The update was not "
        f"applied; the last good checkpoint is step {ckpt.latest_step()}. Lower optim.lr, "
        "check the data, or set training.on_nonfinite=skip."
      )
    return count


def compiled_flops(compiled) -> float | None:
  """FLOPs of one step from XLA's cost analysis (None if the backend has none)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # noqa: BLE001 - cost analysis is best-effort
    return None


def _progress(start: int, total: int, desc: str):
  from tqdm import tqdm

  return tqdm(
    total=total,
    initial=start,
    desc=desc,
    disable=jax.process_index() != 0,
    dynamic_ncols=True,
    mininterval=2.0,
  )
