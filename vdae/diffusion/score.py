"""The score model as the rest of the package sees it.

The one place that builds the score network from the config (vdae's own U-Net,
or an imported diffusers UNet2DModel: `model.source`), initialises its
parameters, and turns its output into a noise prediction and a score
(eps <-> score: s = -eps / sigma). Samplers, losses, the fused step's
reference, the likelihood and the autoencoders all go through these, so an
imported model is the same eps_theta(x_t, t) to all of them.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vdae import schema
from vdae.diffusion import sde as sde_lib
from vdae.models import diffusers_unet, network, unet
from vdae.types import Array, EpsFn, Key, Params, ScoreFn


def eps_to_score(eps: Array, sigma: Array) -> Array:
  """Score from a noise prediction: -eps / sigma(t), eps [B, ...], sigma [B]."""
  return -eps / sde_lib.bcast(sigma, eps)


def prediction_to_eps(pred: Array, x_t: Array, alpha: Array, sigma: Array, kind: str) -> Array:
  """The noise prediction of a network that predicts `kind` at x_t = alpha x_0 + sigma eps.

  epsilon: itself. v_prediction (v = alpha eps - sigma x_0, VP: alpha^2 + sigma^2
  = 1): eps = alpha v + sigma x_t. sample (x_0): eps = (x_t - alpha x_0) / sigma.
  """
  a, s = sde_lib.bcast(alpha, pred), sde_lib.bcast(sigma, pred)
  if kind == "epsilon":
    return pred
  if kind == "v_prediction":
    return a * pred + s * x_t
  if kind == "sample":
    return (x_t - a * pred) / s
  raise ValueError(f"prediction type {kind!r}")


class ImportedScoreNet(nnx.Module):
  """eps(x [B, H, W, C], t [B]) of an imported UNet2DModel: its timestep is
  t * time_scale, its output converted to a noise prediction under `sde`.

  Data range: vdae's images are in [-1, 1], the range DDPM checkpoints are
  trained in, so x goes in unchanged."""

  NAMED = network.ALL

  def __init__(self, unet: nnx.Module, prediction_type: str, sde: sde_lib.SDE, time_scale):
    self.unet = unet
    self.prediction_type, self.sde, self.time_scale = prediction_type, sde, time_scale

  def __call__(self, x, t, train: bool = False, temb=None, *, rngs=None):
    del temb  # the sampler's precomputed features are vdae's embedding, not this one's
    out = self.unet(x, t * self.time_scale, train, rngs=rngs)
    alpha, sigma = self.sde.marginal(t)
    return prediction_to_eps(out, x, alpha, sigma, self.prediction_type)


def imported_score_net(in_shape, *, spec, dtype, prediction_type, sde, time_scale, rngs):
  """The network of an imported UNet2DModel (`Network`'s builder)."""
  unet = diffusers_unet.UNet2DModel(in_shape, spec=spec, dtype=dtype, rngs=rngs)
  return ImportedScoreNet(unet, prediction_type, sde, time_scale)


SOURCES = ("native", "diffusers")  # model.source: trained here, or an imported DDPM


def model_from_config(model, sde) -> network.Network:
  """The score network of the config's `model` and `sde` groups: vdae's U-Net or the
  imported model (model.source)."""
  if schema.require("model.source", model.source, SOURCES) == "native":
    return unet.from_config(model, sde)
  from vdae.io import pretrained  # reads the directory's JSON (cached), no tensors

  sched = pretrained.check_resolved(model.path, sde)
  return network.Network(
    imported_score_net,
    spec=pretrained.unet_spec(model.path),
    dtype=jnp.dtype(model.dtype),
    prediction_type=sched.prediction_type,
    sde=sde_lib.from_config(sde),
    time_scale=sde.time_scale,
  )


def score_fn_from_eps(eps_fn: EpsFn, sde: sde_lib.SDE) -> ScoreFn:
  """(x, t) -> score of a noise-prediction network under `sde`."""

  def score_fn(x: Array, t: Array) -> Array:
    return eps_to_score(eps_fn(x, t), sde.marginal(t)[1])

  return score_fn


def init_params(model: network.Network, key: Key, image_shape: tuple[int, ...]) -> Params:
  """The score network's parameters for images of `image_shape` [H, W, C]."""
  return model.init(key, image_shape)


def eps_fn_for(
  net: network.Network, params: Params, model, train: bool = False, rngs=None
) -> EpsFn:
  """eps(x, t, temb=None) of `net` built from the `model` group: the sampler's
  precomputed embedding is used when it applies."""
  use_temb = model.source == "native" and model.embedding == "sinusoidal"

  def eps_fn(x, t, temb=None):
    return net.apply(params, x, t, train, temb if use_temb else None, rngs=rngs)

  return eps_fn
