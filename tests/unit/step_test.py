"""The train step's logged learning rate is the one the optimizer applied."""

import numpy as np
import pytest


@pytest.mark.timeout(120)
def test_the_lr_metric_is_the_rate_adam_applied_at_that_step(tiny_config):
  """With a constant gradient c, Adam's bias-corrected step is lr_k * sign(c) (up to
  its eps), so the logged lr must equal the parameter's change: an off-by-one in the
  schedule's step index (or a schedule not the optimizer's) shows at once during the
  warmup, where every step's rate differs."""
  import jax.numpy as jnp

  from vdae.parallel import sharding
  from vdae.training import state as state_lib
  from vdae.training import step as step_lib

  cfg = tiny_config.optim
  cfg.grad_clip = 0.0
  cfg.weight_decay = 0.0
  mesh = sharding.make_mesh(tiny_config.mesh)
  c = np.array([3.0, -2.0, 0.5, -4.0], np.float32)
  loss_fn = lambda p, b, key, frozen: (jnp.sum(p["w"] * c) + 0.0 * jnp.mean(b["image"]), {})
  opt, sched = state_lib.make_optimizer(1e-2, 4, 10, cfg)
  state, shardings = state_lib.create_sharded(
    lambda key: {"w": jnp.zeros((4,))}, opt, 0, mesh, tiny_config.mesh.param_rules
  )
  step_fn = step_lib.jit_step(loss_fn, opt, 0.999, shardings, None, mesh, sched=sched)
  watch = step_lib.NonFiniteWatch(mesh)
  local = {
    "image": np.zeros((4, 8, 8, 1), np.float32),
    "label": np.zeros(4, np.int32),
    "index": np.arange(4, dtype=np.int32),
  }
  lrs = []
  for _ in range(7):
    before = np.asarray(state.params["w"]).copy()
    state, metrics, watch.arrays = step_fn(
      state, sharding.global_batch(local, mesh), None, watch.arrays
    )
    moved = (before - np.asarray(state.params["w"])) * np.sign(c)
    lr = float(metrics["lr"])
    np.testing.assert_allclose(moved, lr, rtol=1e-4, atol=1e-9)
    lrs.append(lr)
  # Warmup from 0 over 4 steps, then cosine decay: rising, then falling.
  assert lrs[0] == 0.0 and lrs[1] < lrs[2] < lrs[3] < lrs[4]
  assert lrs[4] == pytest.approx(1e-2) and lrs[6] < lrs[5] < lrs[4]
