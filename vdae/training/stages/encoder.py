"""Stage 2: the time-dependent encoder, trained on the frozen score model."""

from __future__ import annotations

import jax
import numpy as np

from vdae.autoencoders.vdae import VDAE
from vdae.diffusion import score
from vdae.diffusion import sde as sde_lib
from vdae.kernels.reference import StepSpec
from vdae.latent import objective
from vdae.models import encoder as encoder_lib
from vdae.models import sizes
from vdae.training import loading
from vdae.training.stages.base import Stage
from vdae.training.stages.score_model import ScoreModel, check_pairing, score_pairing


def make_encoder_loss(config, correction_impl: str = "reverse", kernel: str | None = None):
  """loss_fn(enc_params, batch, key, score_params) -> (loss, aux)."""
  score_model = score.model_from_config(config.model, config.sde)
  enc = encoder_lib.from_config(config.encoder, config.model, config.sde)
  sde, s2 = sde_lib.from_config(config.sde), config.stage2
  spec = StepSpec.from_config(config.model, config.sde)

  def loss_fn(params, batch, key, score_params):
    return objective.vdae_loss(
      lambda x, t: score_model.apply(score_params, x, t),
      lambda x, t: enc.apply(params, x, t),
      batch["image"],
      key,
      sde,
      spec,
      beta_kl=s2.beta_kl,
      form=s2.loss,
      logvar_term=config.encoder.logvar_term,
      time_sampling=s2.time_sampling,
      weighting=s2.weighting,
      weight_cap=s2.weight_cap,
      kernel=config.sampling.kernel if kernel is None else kernel,
      correction_impl=correction_impl,
    )

  return loss_fn


class Encoder(Stage):
  name, mode, what, title = "stage2", "train_encoder", "encoder", "encoder (VDAE)"
  compare_keys = ("model", "sde", "encoder")

  @classmethod
  def init(cls, config, image_shape):
    enc = encoder_lib.from_config(config.encoder, config.model, config.sde)
    return lambda key: encoder_lib.init_params(enc, key, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    ScoreModel.check_shape(config, image_shape)
    sizes.check_encoder(config.encoder, image_shape)

  def __init__(self, ctx, score_params=None):
    """score_params: the score model's (a benchmark's); by default the stage-1
    checkpoint's, read and paired before anything of stage 2 is written."""
    super().__init__(ctx)
    if score_params is None:
      score_params, _ = loading.load(ScoreModel, ctx.config, ctx.workdir, ctx.mesh, ctx.image_shape)
      self.check_resume()
      self.meta.update(score_pairing(ctx.config, ctx.workdir))
    self.loss_fn, self.frozen = make_encoder_loss(ctx.config), score_params
    self._ae = VDAE(ctx.config, score_params, None, ctx.mesh, ctx.image_shape)
    self._x = ctx.recon_batch()

  def check_resume(self):
    c, wd = self.config, self.ctx.workdir
    if loading.is_trained(Encoder, c, wd):
      check_pairing(loading.read_meta(Encoder, c, wd), c, wd, "resume the encoder")

  def images(self, state, step):
    self._ae.enc_params = state.ema_params
    rec = self._ae.reconstruct(self._x, jax.random.key(step))
    return {"reconstructions": np.concatenate([self._x, rec], axis=0)}
