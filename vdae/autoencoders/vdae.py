"""The VDAE as an `Autoencoder`: frozen score model + trained encoder, no decoder network.

Encoding is the encoder's q(z | x_0, t = 0). Decoding integrates the reverse
SDE / probability-flow ODE with the conditional score
s_theta(x_t, t) + c, c = grad_{x_t} log q(z | x_t, t) (`make_decode_fn`).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders.base import Autoencoder
from vdae.data import pipeline
from vdae.diffusion import samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.kernels.reference import StepSpec
from vdae.latent import correction
from vdae.models import encoder as encoder_lib
from vdae.parallel import sharding
from vdae.types import Params


def with_method(config, method: str):
  """A copy of the config whose sampling.method is `method`."""
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.sampling.method = method
  return cfg


def make_decode_fn(score_model, enc_model, config, shape) -> samplers.CompiledSampler:
  """decoder((score_params, enc_params, z [N, L]), key, x_init=None) -> x [N, H, W, C]."""
  lv = config.encoder.logvar_term

  def make_fns(args):
    score_params, enc_params, z = args
    eps_fn = score.eps_fn_for(score_model, score_params, config)
    encode_fn = lambda x, t: enc_model.apply({"params": enc_params}, x, t)
    return eps_fn, lambda x, t: correction.correction_score(encode_fn, x, t, z, lv)

  return samplers.compile_sampler(
    make_fns, config.sampling, sde_lib.from_config(config.sde), StepSpec.from_config(config), shape
  )


def make_encode_fn(enc_model):
  """jit(enc_params, x [N, H, W, C]) -> (mu, log_var) of q(z | x_0, t=0)."""

  def run(enc_params, x):
    return enc_model.apply({"params": enc_params}, x, jnp.zeros((x.shape[0],), jnp.float32))

  return jax.jit(run)


class VDAE(Autoencoder):
  """decode(z, key) is one draw of the configured sampler (`sampling.method`)."""

  name = "vdae"

  def __init__(self, config, score_params: Params, enc_params: Params, mesh, image_shape):
    self.config, self.mesh, self.image_shape = config, mesh, tuple(image_shape)
    self.score_params, self.enc_params = score_params, enc_params
    self.score_model = score.model_from_config(config)
    self.encoder = encoder_lib.from_config(config.encoder, config.model, config.sde)
    self.latent_dim = config.encoder.latent_dim
    self._encode = make_encode_fn(self.encoder)
    self._decoders: dict[tuple[int, str], samplers.CompiledSampler] = {}

  def _global(self, a: np.ndarray) -> jax.Array:
    # Replicated global input: with fsdp spanning processes the params live on
    # every process's devices, so a process-local array would not do.
    return sharding.replicated_from_host(np.asarray(a, np.float32), self.mesh)

  def posterior(self, x):
    mu, lv = self._encode(self.enc_params, self._global(x))
    return sharding.to_host(mu), sharding.to_host(lv)

  def decoder(self, n: int, method: str | None = None) -> samplers.CompiledSampler:
    """The compiled sampler for batches of n codes (cached per n and method)."""
    method = method or self.config.sampling.method
    if (n, method) not in self._decoders:
      self._decoders[(n, method)] = make_decode_fn(
        self.score_model, self.encoder, with_method(self.config, method), (n, *self.image_shape)
      )
    return self._decoders[(n, method)]

  def decode(self, z, key, method: str | None = None, x_init: np.ndarray | None = None):
    fn = self.decoder(len(z), method)
    x_init = None if x_init is None else self._global(x_init)
    out = fn((self.score_params, self.enc_params, self._global(z)), key, x_init)
    return sharding.to_host(out)

  def compile_decode(self, z, method: str | None = None) -> None:
    args = (self.score_params, self.enc_params, self._global(z))
    self.decoder(len(z), method).precompile(args, jax.random.key(0))

  def reconstruct(self, x: np.ndarray, key) -> np.ndarray:
    return self.decode(self.encode(x), key)

  def extra_metrics(self, test_images, batch, seed):
    """time_per_image_<method>: seconds per image of one batch of reconstructions
    with each of eval.timing_methods other than sampling.method (compile excluded)."""
    out = {}
    mu = pipeline.pad_batch({"z": self.encode(test_images[:batch])}, batch)["z"]
    for method in self.config.eval.timing_methods:
      if not method or method == self.config.sampling.method:
        continue
      self.compile_decode(mu, method)
      t0 = time.perf_counter()
      self.decode(mu, jax.random.fold_in(jax.random.key(seed), 0), method)
      out[f"time_per_image_{method}"] = (time.perf_counter() - t0) / batch
    return out
