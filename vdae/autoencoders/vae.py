"""The VAE baseline: its networks and ELBO (`VAEModel`) and its `Autoencoder`.

Encoder: the stage-2 `Encoder` architecture called at t = 0 (so the only
difference from the VDAE's encoder is how it is trained). Decoder: a mirrored
network (vdae/models/decoder.py) giving the mean of p(x | z) = N(mean,
sigma^2 I), with one log sigma^2 either fixed or learned. Loss: the negative
ELBO per image, E_q[-log p(x | z)] + beta_kl KL(q(z | x) || N(0, I)), trained
as the stage "vae" (WORKDIR/vae/checkpoints).

  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=train_vae
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders.base import Autoencoder, check_protocol
from vdae.data import pipeline
from vdae.diffusion import likelihood
from vdae.latent.correction import kl_standard_normal
from vdae.models import decoder as decoder_lib
from vdae.models import encoder as encoder_lib
from vdae.models.network import Network
from vdae.parallel import sharding
from vdae.types import Array, Key, Params

# vae fields that change the parameters' shapes or meaning: must match to resume / load.
ARCH_FIELDS = (
  "decoder_channels",
  "decoder_channel_mults",
  "decoder_num_res_blocks",
  "learn_obs_var",
)


@dataclasses.dataclass(frozen=True)
class VAEModel:
  """The two networks; params are {'encoder', 'decoder'[, 'obs_log_var']}."""

  encoder: Network
  decoder: Network
  obs_log_var: float
  learn_obs_var: bool

  def init(self, key: Key, image_shape: tuple[int, int, int]) -> Params:
    k_e, k_d = jax.random.split(key)
    params = {
      "encoder": encoder_lib.init_params(self.encoder, k_e, image_shape),
      "decoder": self.decoder.init(k_d, (self.encoder.latent_dim,)),
    }
    if self.learn_obs_var:
      params["obs_log_var"] = jnp.asarray(self.obs_log_var, jnp.float32)
    return params

  def encode(self, params: Params, x: Array) -> tuple[Array, Array]:
    """x [B, H, W, C] -> (mu, log_var) [B, L] of q(z | x): the encoder at t = 0."""
    return self.encoder.apply(params["encoder"], x, jnp.zeros((x.shape[0],), jnp.float32))

  def decode(self, params: Params, z: Array) -> Array:
    """z [B, L] -> mean of p(x | z) [B, H, W, C]."""
    return self.decoder.apply(params["decoder"], z)

  def log_var(self, params: Params) -> Array:
    return params["obs_log_var"] if self.learn_obs_var else jnp.asarray(self.obs_log_var)

  def neg_elbo(
    self, params: Params, x: Array, key: Key, beta_kl: float = 1.0
  ) -> tuple[Array, dict[str, Array]]:
    """Per-image -ELBO [B] in nats (one z sample) and its parts, each [B]."""
    mu, lv = self.encode(params, x)
    z = mu + jnp.exp(0.5 * lv) * jax.random.normal(key, mu.shape)
    mean = self.decode(params, z)
    olv = self.log_var(params)
    sq = jnp.sum(jnp.square(x - mean).reshape(x.shape[0], -1), axis=-1)
    d = math.prod(x.shape[1:])
    nll = 0.5 * (sq * jnp.exp(-olv) + d * (olv + math.log(2 * math.pi)))
    kl = kl_standard_normal(mu, lv)
    return nll + beta_kl * kl, {"nll": nll, "kl": kl, "mse": sq / d}

  def loss_fn(self, beta_kl: float):
    """The training loss (params, batch, key, frozen) -> (mean -ELBO, aux)."""

    def loss_fn(params, batch, key, frozen):
      del frozen
      per_ex, parts = self.neg_elbo(params, batch["image"], key, beta_kl)
      aux = {k: jnp.mean(a) for k, a in parts.items()}
      aux["obs_log_var"] = self.log_var(params)
      return jnp.mean(per_ex), aux

    return loss_fn


def model_from_config(config, image_shape: tuple[int, int, int]) -> VAEModel:
  return VAEModel(
    encoder=encoder_lib.from_config(config.encoder, config.model, config.sde),
    decoder=decoder_lib.from_config(config.vae, config.encoder, image_shape),
    obs_log_var=float(config.vae.obs_log_var),
    learn_obs_var=bool(config.vae.learn_obs_var),
  )


class VAE(Autoencoder):
  """The trained VAE. decode "mode" is the decoder's mean, which is also E[x | z];
  "sample" draws from p(x | z) = N(mean, exp(obs_log_var) I)."""

  name = "vae"
  exact_mean = True

  def __init__(self, config, params: Params, image_shape: tuple[int, int, int], levels: int):
    self.config, self.params, self.levels = config, params, levels
    self.model = model_from_config(config, tuple(image_shape))
    self.latent_dim = self.model.encoder.latent_dim
    self._posterior = jax.jit(self.model.encode)
    self._decode = jax.jit(self.model.decode)

  def posterior(self, x):
    mu, lv = self._posterior(self.params, jnp.asarray(x))
    return sharding.to_host(mu), sharding.to_host(lv)

  def decode(self, z, key, protocol="sample"):
    check_protocol(protocol)
    mean = self._decode(self.params, jnp.asarray(z))
    if protocol == "sample":
      std = jnp.exp(0.5 * self.model.log_var(self.params))
      mean = mean + std * jax.random.normal(key, mean.shape)
    return sharding.to_host(jax.block_until_ready(mean))

  def reconstruct(self, x: np.ndarray) -> np.ndarray:
    return self.decode(self.encode(x), None, "mode")

  def extra_metrics(self, test_images, batch, seed, hooks=None):
    """neg_elbo_bits_per_dim: the -ELBO (one z per image, dequantised x) in bits per
    dim of the discrete data, an upper bound on the VAE's (closed form: one call a batch)."""
    del seed, hooks
    levels, dequant = self.levels, self.config.eval.dequantize
    d = math.prod(test_images.shape[1:])

    def run(p, xb, key):
      k_deq, k_z = jax.random.split(key)
      if dequant:
        xb = likelihood.dequantize(xb, levels, k_deq)
      nelbo, _ = self.model.neg_elbo(p, xb, k_z)
      return likelihood.bits_per_dim(-nelbo, d, levels)

    fn = jax.jit(run)
    counter = iter(range(len(test_images)))
    vals = pipeline.map_batched(
      lambda b: fn(self.params, jnp.asarray(b), jax.random.key(next(counter))), test_images, batch
    )
    return {"neg_elbo_bits_per_dim": float(np.mean(vals))}
