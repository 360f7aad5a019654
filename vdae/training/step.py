"""The jitted train step (pure), its sharded compilation, and its on-device non-finite watch.

The step is one function of (state, batch, frozen, watch): `frozen` carries
the parameters of earlier stages that a loss reads (stage 2's score model),
passed as an argument, never optimised and never closed over; `watch` is the
non-finite record the step updates on device (one dispatch a step, no host
sync). It is jitted once with explicit in/out shardings, state and watch donated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from vdae.parallel import sharding
from vdae.types import LossFn


def train_step(state, batch, frozen, watch, *, loss_fn: LossFn, opt, ema_decay: float, sched=None):
  """One optimizer step. Non-finite loss or gradients leave the state untouched
  (and raise the `nonfinite` metric, and are noted in `watch`: (the first such
  step or 0, how many)) so a bad batch can never poison params. With `sched`, the
  step's learning rate is a metric: computed here, the host never evaluates the
  schedule (which would compile a handful of tiny programs every run)."""
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
  if sched is not None:
    metrics["lr"] = jnp.asarray(sched(state.step), jnp.float32)
  first_bad, count = watch
  this_step = (state.step + 1).astype(first_bad.dtype)  # the loop's step number
  first_bad = jnp.where((first_bad == 0) & ~ok, this_step, first_bad)
  return new_state, metrics, (first_bad, count + (~ok).astype(count.dtype))


def jit_step(
  loss_fn: LossFn, opt, ema_decay: float, state_shardings, frozen: Any, mesh, sched=None
):
  """step(state, batch, frozen, watch) -> (state, metrics, watch), jitted with explicit
  in/out shardings, the state and the watch donated; `sched` adds the `lr` metric."""
  frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
  # One sharding for every array of the batch, whatever its keys: a spec that names
  # only the leading axis leaves the rest whole at any rank.
  batch_sh = sharding.batch_sharding(mesh, 1)
  rep = sharding.replicated(mesh)
  return jax.jit(
    lambda s, b, f, w: train_step(
      s, b, f, w, loss_fn=loss_fn, opt=opt, ema_decay=ema_decay, sched=sched
    ),
    in_shardings=(state_shardings, batch_sh, frozen_sh, (rep, rep)),
    out_shardings=(state_shardings, rep, (rep, rep)),
    donate_argnums=(0, 3),
  )


def compiled_flops(compiled) -> float | None:
  """FLOPs of one step from XLA's cost analysis (None if the backend has none)."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
      cost = cost[0]
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # noqa: BLE001 - cost analysis is best-effort
    return None


class NonFiniteWatch:
  """Remembers every skipped (non-finite) step between the loop's host syncs, so
  `on_nonfinite=stop` stops on a one-off bad step too, not only on one that falls
  on a log or checkpoint step. `arrays` (first skipped step or 0, count) go
  through the train step, which updates them on device."""

  def __init__(self, mesh):
    rep = sharding.replicated(mesh)
    self.arrays = tuple(jax.device_put(jnp.zeros((), jnp.int32), rep) for _ in range(2))

  def read(self) -> tuple[int, int]:
    """(first skipped step or 0, number of skipped steps): a host sync."""
    first, count = jax.device_get(self.arrays)
    return int(first), int(count)
