"""The VAE's diffusion refiner (IR-SDE's mean-reverting SDE towards the VAE's output),
on a trained VAE or trained jointly with its own."""

from __future__ import annotations

import jax
import numpy as np

from vdae.autoencoders import refined_vae
from vdae.autoencoders import vae as vae_lib
from vdae.data import sources
from vdae.models import sizes
from vdae.training import loading
from vdae.training.stages.base import Stage
from vdae.training.stages.vae import VAE


class Refiner(Stage):
  name, mode, what = "refiner", "train_refiner", "refiner"
  title = "VAE refiner (mean-reverting DSM)"
  compare_keys = (
    ("encoder",)
    + tuple(f"vae.{f}" for f in vae_lib.ARCH_FIELDS)
    + tuple(f"refiner.{f}" for f in refined_vae.ARCH_FIELDS)
  )
  upstream = ("vae_step", VAE, "the VAE's outputs")

  @classmethod
  def init(cls, config, image_shape):
    return refined_vae.init_params(config, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    VAE.check_shape(config, image_shape)
    sizes.check_refiner(config.refiner, image_shape)

  def __init__(self, ctx):
    super().__init__(ctx)
    cfg = ctx.config
    self._x, self._levels = ctx.recon_batch(), sources.data_levels(cfg.data, cfg.eval)
    if cfg.refiner.joint:  # its own VAE, trained with it (refined_vae.make_loss)
      model = vae_lib.model_from_config(cfg, ctx.image_shape)
      self.loss_fn = refined_vae.make_loss(cfg, model, ctx.image_shape)
      self.meta["vae_beta_kl"] = float(cfg.vae.beta_kl)
      self._vae = None
      return
    vae_params, _ = loading.load(VAE, cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
    self.check_resume()
    self._vae = vae_lib.VAE(cfg, vae_params, ctx.image_shape, self._levels)
    self.loss_fn = refined_vae.make_loss(cfg, self._vae.model, ctx.image_shape)
    self.frozen = vae_params
    self.record_upstream()

  def images(self, state, step):
    cfg, ctx, p = self.config, self.ctx, state.ema_params
    joint = self._vae is None
    vae = vae_lib.VAE(cfg, p["vae"], ctx.image_shape, self._levels) if joint else self._vae
    refiner_params = p["refiner"] if joint else p
    ae = refined_vae.RefinedVAE(cfg, vae, refiner_params, ctx.mesh, ctx.image_shape)
    x_bar = vae.reconstruct(self._x)
    refined = ae.refine(x_bar, jax.random.key(step))
    return {"refined": np.concatenate([self._x, x_bar, refined], axis=0)}
