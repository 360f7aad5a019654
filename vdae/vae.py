"""The baseline: a Gaussian-likelihood VAE with the same encoder, latent size and data.

Encoder: the stage-2 `Encoder` architecture called at t = 0 (so the only
difference from the VDAE's encoder is how it is trained). Decoder: a mirrored
network (vdae/models/decoder.py) giving the mean of p(x | z) = N(mean,
sigma^2 I), with one log sigma^2 either fixed or learned. Loss: the negative
ELBO per image, E_q[-log p(x | z)] + beta_kl KL(q(z | x) || N(0, I)), trained
by the shared `Trainer` (stage "vae", WORKDIR/vae/checkpoints).

  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=train_vae
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from vdae import data, files, latent, restore, sharding
from vdae.models import decoder as decoder_lib
from vdae.models import encoder as encoder_lib
from vdae.trainer import StageSpec, Trainer

log = logging.getLogger(__name__)

STAGE = "vae"
# vae fields that change the parameters' shapes or meaning: must match to resume / load.
ARCH_FIELDS = (
  "decoder_channels",
  "decoder_channel_mults",
  "decoder_num_res_blocks",
  "learn_obs_var",
)


@dataclasses.dataclass(frozen=True)
class VAE:
  """The two networks; params are {'encoder', 'decoder'[, 'obs_log_var']}."""

  encoder: encoder_lib.Encoder
  decoder: decoder_lib.Decoder
  obs_log_var: float
  learn_obs_var: bool

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> dict:
    k_e, k_d = jax.random.split(key)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    params = {
      "encoder": self.encoder.init(k_e, x, jnp.zeros((1,)))["params"],
      "decoder": self.decoder.init(k_d, jnp.zeros((1, self.encoder.latent_dim)))["params"],
    }
    if self.learn_obs_var:
      params["obs_log_var"] = jnp.asarray(self.obs_log_var, jnp.float32)
    return params

  def encode(self, params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, H, W, C] -> (mu, log_var) [B, L] of q(z | x): the encoder at t = 0."""
    return self.encoder.apply(
      {"params": params["encoder"]}, x, jnp.zeros((x.shape[0],), jnp.float32)
    )

  def decode(self, params: dict, z: jax.Array) -> jax.Array:
    """z [B, L] -> mean of p(x | z) [B, H, W, C]."""
    return self.decoder.apply({"params": params["decoder"]}, z)

  def log_var(self, params: dict) -> jax.Array:
    return params["obs_log_var"] if self.learn_obs_var else jnp.asarray(self.obs_log_var)

  def neg_elbo(
    self, params: dict, x: jax.Array, key: jax.Array, beta_kl: float = 1.0
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-image -ELBO [B] in nats (one z sample) and its parts, each [B]."""
    mu, lv = self.encode(params, x)
    z = mu + jnp.exp(0.5 * lv) * jax.random.normal(key, mu.shape)
    mean = self.decode(params, z)
    olv = self.log_var(params)
    sq = jnp.sum(jnp.square(x - mean).reshape(x.shape[0], -1), axis=-1)
    d = math.prod(x.shape[1:])
    nll = 0.5 * (sq * jnp.exp(-olv) + d * (olv + math.log(2 * math.pi)))
    kl = latent.kl_standard_normal(mu, lv)
    return nll + beta_kl * kl, {"nll": nll, "kl": kl, "mse": sq / d}


def from_config(config, image_shape: tuple[int, int, int]) -> VAE:
  return VAE(
    encoder=encoder_lib.from_config(config.encoder, config.model, config.sde),
    decoder=decoder_lib.from_config(config.vae, config.encoder, image_shape),
    obs_log_var=float(config.vae.obs_log_var),
    learn_obs_var=bool(config.vae.learn_obs_var),
  )


class VAETrainer(Trainer):
  stage = STAGE
  # The encoder and the decoder's architecture must match to resume or load.
  compare_keys = ("encoder",) + tuple(f"vae.{f}" for f in ARCH_FIELDS)

  def __init__(self, config, workdir):
    super().__init__(config, workdir)
    self.vae = from_config(config, self.image_shape)
    self._recon_batch = data.eval_batches(self.splits["test"], 16, limit=16)[0]["image"]

  def build(self) -> StageSpec:
    v, vc = self.vae, self.config.vae

    def loss_fn(params, batch, key, frozen):
      del frozen
      per_ex, parts = v.neg_elbo(params, batch["image"], key, vc.beta_kl)
      aux = {k: jnp.mean(a) for k, a in parts.items()}
      aux["obs_log_var"] = v.log_var(params)
      return jnp.mean(per_ex), aux

    return StageSpec(
      init_params=lambda key: v.init(key, self.image_shape),
      loss_fn=loss_fn,
      lr=vc.lr,
      warmup=vc.warmup_steps,
      num_steps=vc.num_steps,
      batch_size=vc.batch_size,
      log_every=vc.log_every,
      image_every=vc.recon_every,
      checkpoint_every=vc.checkpoint_every,
    )

  def images(self, state, step):
    del step
    x = jnp.asarray(self._recon_batch)
    rec = self._reconstruct()(state.ema_params, x)
    return {"reconstructions": np.concatenate([np.asarray(x), sharding.to_host(rec)], axis=0)}

  @functools.cache
  def _reconstruct(self):
    return jax.jit(lambda p, x: self.vae.decode(p, self.vae.encode(p, x)[0]))


def train_vae(config, workdir: str):
  return VAETrainer(config, workdir).train()


def has_checkpoint(workdir: str) -> bool:
  return files.isdir(os.path.join(workdir, STAGE, "checkpoints"))


def load_vae(config, workdir: str, image_shape, mesh) -> tuple[VAE, dict]:
  """Restores (vae, EMA params) from WORKDIR/vae/checkpoints, sharded by the rules."""
  ckpt_dir = os.path.join(workdir, STAGE, "checkpoints")
  vae = from_config(config, tuple(image_shape))
  params, _ = restore.restore_params(
    ckpt_dir,
    lambda key: vae.init(key, tuple(image_shape)),
    config,
    mesh,
    keys=VAETrainer.compare_keys,  # checked before the restore reads any array
    image_shape=image_shape,
    what="VAE",
    run_first="Run --mode=train_vae first.",
  )
  return vae, params
