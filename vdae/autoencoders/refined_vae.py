"""The VAE whose output a mean-reverting diffusion refines: the refiner's
network and loss, and the `RefinedVAE` autoencoder.

A VAE's reconstruction x_bar is a lossy x. IR-SDE's mean-reverting SDE
(diffusion/mean_reverting.py) with mean mu = x_bar carries the sharp x(0) = x to
x(1) ~ x_bar + lam * noise; a U-Net conditioned on x_bar (concatenated as input
channels) learns its noise, and the reverse process takes x_bar + lam * noise back
to a sharp image. The mean must be x_bar itself: the process then starts where
the VAE leaves off, and its endpoint depends on the image only through x_bar.

Two-stage (refiner.joint=false, the default): the VAE is trained first and
frozen; it is a step argument (never optimised) and x_bar is stop-gradient, so
the refiner's gradient cannot reach it. Joint (refiner.joint=true): one stage
trains a VAE of its own and the refiner together on the sum of the VAE's
-ELBO and the refiner's DSM loss, with the DSM gradient stopped at x_bar
(refiner.x_bar_gradient=stop: the VAE learns from its ELBO alone but the
refiner tracks it as it trains) or let through it into the VAE (through: the
VAE is also shaped to make x_bar easy to refine). Either way the encoder, the
code and the rate are the (refiner's) VAE's: only decoding changes.

  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=train_refiner
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders import vae as vae_lib
from vdae.autoencoders.base import Autoencoder, check_protocol, with_method
from vdae.autoencoders.vae import VAE, VAEModel
from vdae.diffusion import losses, samplers
from vdae.diffusion import mean_reverting as mr_lib
from vdae.kernels.reference import StepSpec
from vdae.models import unet
from vdae.models.network import Network
from vdae.parallel import sharding
from vdae.types import Array, Key, Params

# refiner fields that change its parameters' shapes or meaning: must match to resume / load.
ARCH_FIELDS = (
  "lam",
  "schedule",
  "theta_min",
  "theta_max",
  "channels",
  "channel_mults",
  "num_res_blocks",
  "attn_resolutions",
  "joint",
  "x_bar_gradient",
)


def network(refiner, model, channels: int) -> Network:
  """The noise predictor eps(concat(u_t, x_bar), t) -> [B, H, W, channels] of the
  `refiner` group, with the score network's (`model` group's) norm groups, time
  embedding width and dtype."""
  rf, m = refiner, model
  return Network(
    unet.UNet,
    channels=rf.channels,
    channel_mults=tuple(rf.channel_mults),
    num_res_blocks=rf.num_res_blocks,
    attn_resolutions=tuple(rf.attn_resolutions),
    groups=m.groups,
    temb_dim=m.temb_dim,
    time_scale=1000.0,
    min_time=rf.eps,
    dtype=jnp.dtype(m.dtype),
    out_channels=channels,
  )


def init_params(config, image_shape) -> Callable[[Key], Params]:
  """init(key) -> the refiner's parameters for images of image_shape [H, W, C];
  joint: {"vae": the VAE's, "refiner": the refiner's}."""
  net = network(config.refiner, config.model, image_shape[-1])
  h, w, c = image_shape
  init_refiner = lambda key: net.init(key, (h, w, 2 * c))
  if not config.refiner.joint:
    return init_refiner
  vae = vae_lib.model_from_config(config, tuple(image_shape))

  def init_joint(key):
    k_vae, k_ref = jax.random.split(key)
    return {"vae": vae.init(k_vae, tuple(image_shape)), "refiner": init_refiner(k_ref)}

  return init_joint


def eps_fn_for(net: Network, params: Params, x_bar: Array):
  """eps(u, t, temb=None) of the unit-variable SDE, conditioned on x_bar."""

  def eps_fn(u, t, temb=None):
    del temb  # the network embeds t itself
    return net.apply(params, jnp.concatenate([u, x_bar], axis=-1), t)

  return eps_fn


def x_bar_of(vae: VAEModel, vae_params: Params, x: Array, key: Key, stop: bool = True) -> Array:
  """The VAE's output for x: its decoder mean at z ~ q(z | x), gradient stopped
  unless `stop` is False."""
  mu, lv = vae.encode(vae_params, x)
  z = mu + jnp.exp(0.5 * lv) * jax.random.normal(key, mu.shape)
  x_bar = vae.decode(vae_params, z)
  return jax.lax.stop_gradient(x_bar) if stop else x_bar


def _refiner_dsm(refiner, model, image_shape):
  """dsm(refiner_params, x, x_bar, key) -> (DSM loss of u under the mean-reverting SDE, aux)."""
  mr = mr_lib.from_config(refiner)
  net = network(refiner, model, image_shape[-1])

  def dsm(params, x, x_bar, key):
    loss, aux = losses.dsm_loss(
      eps_fn_for(net, params, x_bar), mr.to_unit(x, x_bar), key, mr.unit, False
    )
    aux["vae_mse"] = jnp.mean(jnp.square(x - x_bar))
    return loss, aux

  return dsm


def make_loss(config, vae: VAEModel, image_shape):
  """Two-stage: loss_fn(refiner_params, batch, key, vae_params) -> (DSM loss, aux).
  Joint: loss_fn({"vae", "refiner"}, batch, key, None) -> (-ELBO + DSM loss, aux)."""
  dsm = _refiner_dsm(config.refiner, config.model, image_shape)
  rf = config.refiner

  def two_stage(params, batch, key, vae_params):
    k_z, k_dsm = jax.random.split(key)
    x = batch["image"]
    return dsm(params, x, x_bar_of(vae, vae_params, x, k_z), k_dsm)

  def joint(params, batch, key, frozen):
    del frozen
    k_elbo, k_z, k_dsm = jax.random.split(key, 3)
    x = batch["image"]
    nelbo, parts = vae.neg_elbo(params["vae"], x, k_elbo, config.vae.beta_kl)
    x_bar = x_bar_of(vae, params["vae"], x, k_z, stop=rf.x_bar_gradient == "stop")
    loss, aux = dsm(params["refiner"], x, x_bar, k_dsm)
    aux.update({f"vae_{k}": jnp.mean(v) for k, v in parts.items()}, vae_neg_elbo=jnp.mean(nelbo))
    return jnp.mean(nelbo) + loss, aux

  return joint if rf.joint else two_stage


class RefinedVAE(Autoencoder):
  """The VAE's encoder and rate; decode = the VAE's mean x_bar, then the refiner's
  reverse process from x_bar + lam * noise ("sample": refiner.sample_method; "mode":
  the PF ODE from x_bar itself, the noise's mean, by eval.mode_method like the VDAE's)."""

  name = "refined_vae"

  def __init__(self, config, vae: VAE, params: Params, mesh, image_shape):
    self.config, self.vae, self.params, self.mesh = config, vae, params, mesh
    self.image_shape = tuple(image_shape)
    self.latent_dim = vae.latent_dim
    self.mr = mr_lib.from_config(config.refiner)
    self.net = network(config.refiner, config.model, self.image_shape[-1])
    self._samplers: dict = {}

  def posterior(self, x):
    return self.vae.posterior(x)

  def _sampler(self, n: int, method: str, steps: int) -> samplers.CompiledSampler:
    key = (n, method, steps)
    if key not in self._samplers:
      self._samplers[key] = samplers.compile_sampler(
        lambda args: (eps_fn_for(self.net, args[0], args[1]), None),
        with_method(self.config.sampling, method, steps),
        self.mr.unit,
        StepSpec(self.mr.unit, self.config.model.temb_dim, 1000.0),
        (n, *self.image_shape),
        out_sharding=sharding.replicated(self.mesh),
        mesh=self.mesh,  # each device refines its own rows
      )
    return self._samplers[key]

  def refine(self, x_bar: np.ndarray, key, protocol: str = "sample") -> np.ndarray:
    """x_bar [B, H, W, C] -> the refined images: u from N(0, I) (sample) or 0 (mode)."""
    rf, ev = self.config.refiner, self.config.eval
    if protocol == "mode":
      fn = self._sampler(len(x_bar), ev.mode_method, ev.mode_num_steps)
      u_init = np.zeros_like(x_bar)
    else:
      fn, u_init = self._sampler(len(x_bar), rf.sample_method, rf.sample_num_steps), None
    put = lambda a: sharding.batch_from_host(np.asarray(a, np.float32), self.mesh)
    u = fn((self.params, put(x_bar)), key, None if u_init is None else put(u_init))
    return np.asarray(self.mr.from_unit(sharding.to_host(u), x_bar))

  def decode(self, z, key, protocol="sample"):
    check_protocol(protocol)
    return self.refine(self.vae.decode(z, None, "mode"), key, protocol)
