"""The latent prior: a diffusion model over the encoder's codes z ~ q(z | x_0)."""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from vdae.autoencoders.vdae import VDAE, make_encode_fn
from vdae.data import sources
from vdae.diffusion import sde as sde_lib
from vdae.latent import prior as prior_lib
from vdae.models import encoder as encoder_lib
from vdae.parallel import sharding
from vdae.training import loading
from vdae.training.stages.base import Stage
from vdae.training.stages.encoder import Encoder
from vdae.training.stages.score_model import ScoreModel, check_pairing

log = logging.getLogger(__name__)


def _model(config) -> prior_lib.LatentDenoiser:
  return prior_lib.model_from_config(config.prior, config.encoder.latent_dim, config.sde.time_scale)


def _encode_at_zero(config):
  """jit(enc_params, x) -> (mu, log_var) of q(z | x_0): the VDAE's own encode."""
  return make_encode_fn(encoder_lib.from_config(config.encoder, config.model, config.sde))


def split_posteriors(config, enc_params, split: sources.Split, mesh, flip: bool = False):
  """(mu, log_var) [N, L] of q(z | x_0) for the split's images in order (mirrored: flip)."""
  from vdae.data import pipeline  # the loader's batching, padded with a mask

  encode = _encode_at_zero(config)
  mus, lvs = [], []
  for b in pipeline.eval_batches(split, config.eval.batch_size):
    x = b["image"][:, :, ::-1] if flip else b["image"]
    mu, lv = encode(enc_params, sharding.replicated_from_host(x, mesh))
    mus.append(sharding.to_host(mu)[b["valid"]])
    lvs.append(sharding.to_host(lv)[b["valid"]])
  return np.concatenate(mus), np.concatenate(lvs)


# A posterior table this large is not worth a device's memory: encode every step instead.
POSTERIOR_TABLE_MAX_BYTES = 256 * 2**20


class Prior(Stage):
  name, mode, what, title = "prior", "train_prior", "latent prior", "latent prior (DSM on codes)"
  compare_keys = ("sde", "encoder") + tuple(f"prior.{f}" for f in ("width", "depth", "temb_dim"))
  upstream = ("encoder_step", Encoder, "the codes of the encoder")

  @classmethod
  def init(cls, config, image_shape):
    del image_shape
    model = _model(config)
    return lambda key: prior_lib.init_params(model, key)

  def __init__(self, ctx):
    super().__init__(ctx)
    cfg = ctx.config
    enc_params, meta = loading.load(Encoder, cfg, ctx.workdir, ctx.mesh, ctx.image_shape)
    check_pairing(meta, cfg, ctx.workdir, "train the latent prior")
    self.check_resume()
    split = ctx.splits["train"]
    posteriors = [split_posteriors(cfg, enc_params, split, ctx.mesh)]
    # q(z)'s moments over the images as stored (flips or not).
    self.norm = norm = prior_lib.Normaliser.from_posteriors(*posteriors[0])
    rep = lambda a: sharding.replicated_from_host(a, ctx.mesh)
    model, sde = _model(cfg), sde_lib.from_config(cfg.sde)
    rows = np.arange(len(split)) if split.rows is None else np.asarray(split.rows)
    flips = bool(cfg.data.random_flip)
    size = prior_lib.PosteriorTable.nbytes_for(int(rows.max()) + 1, cfg.encoder.latent_dim, flips)
    if size <= POSTERIOR_TABLE_MAX_BYTES:
      if flips:
        posteriors.append(split_posteriors(cfg, enc_params, split, ctx.mesh, flip=True))
      table = prior_lib.PosteriorTable.from_rows(rows, posteriors)
      self.loss_fn = prior_lib.prior_loss_from_table(model, sde)
      self.frozen = (rep(table.mu), rep(table.log_var), rep(norm.shift), rep(norm.scale))
      log.info("prior: posteriors of %d images looked up, not encoded each step", len(split))
    else:
      self.loss_fn = prior_lib.prior_loss(model, _encode_at_zero(cfg), sde)
      self.frozen = (enc_params, rep(norm.shift), rep(norm.scale))
      log.info("prior: a %.0f MiB posterior table would not fit: encoding each step", size / 2**20)
    self.meta.update(norm.meta())
    self.record_upstream()
    self._enc_params = enc_params

  @functools.cached_property
  def _vdae(self) -> VDAE:
    ctx = self.ctx
    score_params, _ = loading.load(ScoreModel, self.config, ctx.workdir, ctx.mesh, ctx.image_shape)
    return VDAE(self.config, score_params, self._enc_params, ctx.mesh, ctx.image_shape)

  def images(self, state, step):
    z = prior_lib.LearnedPrior(self.config, state.ema_params, self.norm).sample(
      16, jax.random.key(step)
    )
    return {"samples": self._vdae.decode(z, jax.random.key(step + 1))}


def load_prior(config, workdir: str, mesh, image_shape, step=None) -> prior_lib.LearnedPrior | None:
  """The trained latent prior for sampling.latent_prior (None: sample N(0, I)), its
  newest checkpoint or `step`'s.

  auto: the learned one when it has a checkpoint; learned: it, or a
  CheckpointError; standard_normal: None."""
  choice = config.sampling.latent_prior
  absent = choice == "auto" and not loading.is_trained(Prior, config, workdir)
  if choice == "standard_normal" or absent:
    return None
  params, meta = loading.load(Prior, config, workdir, mesh, image_shape, step=step)
  Prior.check_upstream(meta, config, workdir)
  return prior_lib.LearnedPrior(config, params, prior_lib.Normaliser.from_meta(meta))
