"""The score model as the rest of the package sees it (owned here).

The one place that builds the score network from the config, initialises its
parameters, and turns its noise prediction into a score (s = -eps / sigma).
Samplers, losses, the fused step's reference, the likelihood and the
autoencoders all go through these.
"""

from __future__ import annotations

import jax.numpy as jnp

from vdae.diffusion import sde as sde_lib
from vdae.models import unet
from vdae.types import Array, EpsFn, Key, Params, ScoreFn


def eps_to_score(eps: Array, sigma: Array) -> Array:
  """Score from a noise prediction: -eps / sigma(t), eps [B, ...], sigma [B]."""
  return -eps / sde_lib.bcast(sigma, eps)


def score_fn_from_eps(eps_fn: EpsFn, sde: sde_lib.SDE) -> ScoreFn:
  """(x, t) -> score of a noise-prediction network under `sde`."""

  def score_fn(x: Array, t: Array) -> Array:
    return eps_to_score(eps_fn(x, t), sde.marginal(t)[1])

  return score_fn


def model_from_config(config) -> unet.UNet:
  return unet.from_config(config.model, config.sde)


def init_params(model: unet.UNet, key: Key, image_shape: tuple[int, ...]) -> Params:
  """The score network's parameters for images of `image_shape` [H, W, C]."""
  x = jnp.zeros((1, *image_shape), jnp.float32)
  return model.init(key, x, jnp.ones((1,)))["params"]


def eps_fn_for(model: unet.UNet, params: Params, config, train: bool = False, rngs=None) -> EpsFn:
  """eps(x, t, temb=None): the sampler's precomputed embedding is used when it applies."""
  use_temb = config.model.embedding == "sinusoidal"

  def eps_fn(x, t, temb=None):
    return model.apply({"params": params}, x, t, train, temb if use_temb else None, rngs=rngs or {})

  return eps_fn
