"""The training state (a typed pytree), the optimizer, and the state's builder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from vdae import schema
from vdae.parallel import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. Plain arrays: Orbax saves it as is."""

  step: jax.Array  # [] int32
  params: Any
  opt_state: Any
  ema_params: Any
  rng: jax.Array  # [2] uint32 raw key data, so Orbax stores a plain array


SCHEDULES = ("constant", "cosine")  # optim.schedule: the learning rate after warmup


def make_optimizer(
  lr: float, warmup: int, total: int, optim_cfg
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup, then constant or cosine decay; global-norm clipping.

  Returns the optimizer and its learning-rate schedule (for logging).
  """
  if schema.require("optim.schedule", optim_cfg.schedule, SCHEDULES) == "cosine":
    sched = optax.warmup_cosine_decay_schedule(
      0.0, lr, max(warmup, 1), max(total, warmup + 1), end_value=lr * 0.05
    )
  else:
    sched = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup]
    )
  parts = [optax.clip_by_global_norm(optim_cfg.grad_clip)] if optim_cfg.grad_clip > 0 else []
  parts.append(
    optax.adamw(sched, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay)
  )
  return optax.chain(*parts), sched


def state_init(
  init_params: Callable[[jax.Array], Any], opt: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
  """key -> a fresh TrainState: where every state is put together."""

  def init(key):
    k_init, k_state = jax.random.split(key)
    params = init_params(k_init)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=opt.init(params),
      ema_params=params,
      rng=jax.random.key_data(k_state),
    )

  return init


def abstract_state(
  init_params: Callable[[jax.Array], Any], opt: optax.GradientTransformation
) -> TrainState:
  """The TrainState's shapes and dtypes, without allocating it."""
  return jax.eval_shape(state_init(init_params, opt), jax.random.key(0))


def create_sharded(
  init_params: Callable[[jax.Array], Any],
  opt: optax.GradientTransformation,
  seed: int,
  mesh,
  rules,
) -> tuple[TrainState, Any]:
  """Creates the state already laid out on the mesh (never whole on one device).

  eval_shape gives the abstract state, the rules give its shardings, and the
  init runs under jit with those out_shardings.
  """
  init = state_init(init_params, opt)
  key = jax.random.key(seed)
  abstract = jax.eval_shape(init, key)
  shardings = sharding.state_shardings(abstract, mesh, rules)
  state = jax.jit(init, out_shardings=shardings)(key)
  return state, shardings
