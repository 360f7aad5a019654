"""The VAE baseline: its encoder (stage 2's architecture at t = 0) and a mirrored decoder
on the -ELBO."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders import vae as vae_lib
from vdae.models import sizes
from vdae.parallel import sharding
from vdae.training.stages.base import Stage


class VAE(Stage):
  name, mode, what, title = "vae", "train_vae", "VAE", "VAE (-ELBO)"
  compare_keys = ("encoder",) + tuple(f"vae.{f}" for f in vae_lib.ARCH_FIELDS)

  @classmethod
  def init(cls, config, image_shape):
    model = vae_lib.model_from_config(config, image_shape)
    return lambda key: model.init(key, image_shape)

  @classmethod
  def check_shape(cls, config, image_shape):
    sizes.check_encoder(config.encoder, image_shape)
    sizes.check_vae_decoder(config.vae, image_shape)

  def __init__(self, ctx):
    super().__init__(ctx)
    model = vae_lib.model_from_config(ctx.config, ctx.image_shape)
    self._x = jnp.asarray(ctx.recon_batch())
    self._reconstruct = jax.jit(lambda p, x: model.decode(p, model.encode(p, x)[0]))
    self.loss_fn = model.loss_fn(ctx.config.vae.beta_kl)

  def images(self, state, step):
    del step
    rec = self._reconstruct(state.ema_params, self._x)
    return {"reconstructions": np.concatenate([np.asarray(self._x), sharding.to_host(rec)], axis=0)}
