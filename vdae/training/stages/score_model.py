"""Stage 1: the score model, trained by denoising score matching or imported (a
diffusers DDPM: model.source=diffusers)."""

from __future__ import annotations

import functools

import jax

from vdae.diffusion import losses, samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.io import pretrained
from vdae.kernels.reference import StepSpec
from vdae.models import sizes
from vdae.parallel import sharding
from vdae.training import provenance
from vdae.training.stages.base import Stage


def make_sample_fn(config, shape, mesh):
  """f(score_params, key) -> unconditional samples [N, H, W, C], replicated."""
  model = score.model_from_config(config.model, config.sde)
  fn = samplers.compile_sampler(
    lambda params: (score.eps_fn_for(model, params, config.model), None),
    config.sampling,
    sde_lib.from_config(config.sde),
    StepSpec.from_config(config.model, config.sde),
    shape,
    out_sharding=sharding.replicated(mesh),
  )
  return lambda params, key: fn(params, key)


class ScoreModel(Stage):
  name, mode, what, title = "stage1", "pretrain", "stage-1", "score model (DSM)"
  compare_keys = ("model", "sde")
  source_key = "stage2.stage1_workdir"

  @classmethod
  def init(cls, config, image_shape):
    model = score.model_from_config(config.model, config.sde)
    return lambda key: score.init_params(model, key, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    if cls.imported(config):
      path = config.model.path
      pretrained.check_image_shape(pretrained.unet_spec(path), tuple(image_shape), path)
    else:
      sizes.check_score_model(config.model, image_shape)

  @classmethod
  def imported(cls, config):
    return config.model.source != "native"

  def __init__(self, ctx):
    super().__init__(ctx)
    cfg = ctx.config
    model, sde = score.model_from_config(cfg.model, cfg.sde), sde_lib.from_config(cfg.sde)

    def loss_fn(params, batch, key, frozen):
      del frozen
      k_loss, k_drop = jax.random.split(key)
      eps_fn = score.eps_fn_for(model, params, cfg.model, train=True, rngs={"dropout": k_drop})
      return losses.dsm_loss(eps_fn, batch["image"], k_loss, sde, cfg.stage1.likelihood_weighting)

    self.loss_fn = loss_fn
    n = min(cfg.sampling.num_samples, 64)
    self._sample = functools.cache(lambda: make_sample_fn(cfg, (n, *ctx.image_shape), ctx.mesh))

  def images(self, state, step):
    out = self._sample()(state.ema_params, jax.random.key(step))
    return {"samples": sharding.to_host(out)}  # a gather when multi-process


def score_pairing(config, workdir: str) -> dict:
  """Which score parameters an encoder trained now is paired with (provenance)."""
  return provenance.score_record(ScoreModel, config, workdir)


def check_pairing(recorded: dict, config, workdir: str, doing: str) -> None:
  """The encoder meets the score parameters it was trained against, or an error."""
  provenance.check_score_pairing(ScoreModel, recorded, config, workdir, doing)
