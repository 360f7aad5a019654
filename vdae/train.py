"""Stage 1: score-model pretraining, and unconditional sampling from it."""

from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from vdae import files, losses, restore, sampling, sharding, writer
from vdae import sde as sde_lib
from vdae.kernels import fused_step
from vdae.models import unet
from vdae.trainer import StageSpec, Trainer

log = logging.getLogger(__name__)

STAGE = "stage1"


def step_spec(config) -> fused_step.StepSpec:
  return fused_step.StepSpec(
    sde_lib.from_config(config.sde), config.model.temb_dim, config.sde.time_scale
  )


def eps_fn_for(model: unet.UNet, params, config) -> sampling.EpsFn:
  """(x, t, temb) -> eps with the sampler's precomputed embedding when it applies."""
  use_temb = config.model.embedding == "sinusoidal"

  def eps_fn(x, t, temb=None):
    return model.apply({"params": params}, x, t, False, temb if use_temb else None)

  return eps_fn


class Pretrainer(Trainer):
  stage = STAGE

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.model = unet.from_config(config.model, config.sde)
    self.sde = sde_lib.from_config(config.sde)

  def build(self) -> StageSpec:
    cfg, model, sde = self.config, self.model, self.sde
    dummy = jnp.zeros((1, *self.image_shape), jnp.float32)

    def init_params(key):
      return model.init(key, dummy, jnp.ones((1,)))["params"]

    def loss_fn(params, batch, key, frozen):
      del frozen
      k_loss, k_drop = jax.random.split(key)
      eps_fn = lambda x, t: model.apply({"params": params}, x, t, True, rngs={"dropout": k_drop})
      return losses.dsm_loss(eps_fn, batch["image"], k_loss, sde, cfg.training.likelihood_weighting)

    t = cfg.training
    return StageSpec(
      init_params=init_params,
      loss_fn=loss_fn,
      lr=cfg.optim.lr,
      warmup=cfg.optim.warmup_steps,
      num_steps=t.num_steps,
      batch_size=t.batch_size,
      log_every=t.log_every,
      image_every=t.sample_every,
      checkpoint_every=t.checkpoint_every,
    )

  def images(self, state, step):
    n = min(self.config.sampling.num_samples, 64)
    samples = self.sample_fn(n)(state.ema_params, jax.random.key(step))
    return {"samples": sharding.to_host(samples)}  # a gather when multi-process

  @functools.cache
  def sample_fn(self, n: int):
    return make_sample_fn(self.model, self.config, (n, *self.image_shape), self.mesh)


def make_sample_fn(model, config, shape, mesh):
  """f(params, key) -> samples [N, H, W, C], replicated (any process can read them)."""
  sde = sde_lib.from_config(config.sde)
  fn = sampling.compile_sampler(
    lambda params: (eps_fn_for(model, params, config), None),
    config.sampling,
    sde,
    step_spec(config),
    shape,
    out_sharding=sharding.replicated(mesh),
  )
  return lambda params, key: fn(params, key)


def pretrain(config, workdir: str):
  return Pretrainer(config, workdir).train()


def load_score_model(config, stage1_dir: str, mesh, image_shape, use_ema: bool = True):
  """Restores the stage-1 (EMA) params from `stage1_dir`, sharded by the rules.

  Returns (model, params, meta). Raises CheckpointError if the checkpoint is
  missing or was trained with another model / SDE config or image shape.
  """
  model = unet.from_config(config.model, config.sde)
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  params, meta = restore.restore_params(
    os.path.join(stage1_dir, STAGE, "checkpoints"),
    lambda key: model.init(key, dummy, jnp.ones((1,)))["params"],
    config,
    mesh,
    keys=("model", "sde"),
    image_shape=image_shape,
    what="stage-1",
    run_first="Run --mode=pretrain first, or point --config.stage2.stage1_workdir at a "
    "workdir that has one.",
    use_ema=use_ema,
  )
  return model, params, meta


def sample_mode(config, workdir: str) -> str:
  """--mode=sample without an encoder: prior samples -> PNG grid + .npz."""
  from vdae import data

  mesh = sharding.make_mesh(config.mesh)
  image_shape = data.load_splits(config.data)["train"].image_shape
  model, params, _ = load_score_model(config, workdir, mesh, image_shape, config.sampling.use_ema)
  n = config.sampling.num_samples
  fn = make_sample_fn(model, config, (n, *image_shape), mesh)
  samples = np.asarray(jax.device_get(fn(params, jax.random.key(config.seed))))
  return write_images(workdir, "samples", "samples", samples)


def write_images(workdir: str, sub: str, name: str, images: np.ndarray, cols=None, **arrays) -> str:
  """Writes WORKDIR/sub/name.png (grid) and name.npz (arrays) from process 0."""
  out_dir = os.path.join(workdir, sub)
  png = os.path.join(out_dir, f"{name}.png")
  if jax.process_index() == 0:
    g = writer.grid(images, cols)
    writer.save_png(png, g, writer.auto_scale(images.shape[1]))
    files.write_npz(os.path.join(out_dir, f"{name}.npz"), images=images, **arrays)
  return png
