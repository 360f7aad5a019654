"""The VDAE as an `Autoencoder`: frozen score model + trained encoder, no decoder network.

Encoding is the encoder's q(z | x_0, t = 0). Decoding integrates the reverse
SDE / probability-flow ODE with the conditional score
s_theta(x_t, t) + c, c = grad_{x_t} log q(z | x_t, t) (`make_decode_fn`).
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdae.autoencoders.base import Autoencoder, check_protocol, with_method
from vdae.data import pipeline, sources
from vdae.diffusion import likelihood, samplers, score
from vdae.diffusion import sde as sde_lib
from vdae.kernels.reference import StepSpec
from vdae.latent import correction
from vdae.models import encoder as encoder_lib
from vdae.parallel import sharding
from vdae.types import Params


def make_decode_fn(
  score_model, enc_model, config, sampling, shape, invert: bool = False, mesh=None
) -> samplers.CompiledSampler:
  """decoder((score_params, enc_params, z [N, L]), key, x_init=None) -> x [N, H, W, C]
  by the `sampling` group's solver; with invert, x_init = x_0 -> its x_1 under the
  conditional PF ODE at z. mesh: the batch split over its batch axes (every device
  decodes its own rows)."""
  lv = config.encoder.logvar_term

  def make_fns(args):
    score_params, enc_params, z = args
    eps_fn = score.eps_fn_for(score_model, score_params, config.model)
    encode_fn = lambda x, t: enc_model.apply(enc_params, x, t)
    return eps_fn, lambda x, t: correction.correction_score(encode_fn, x, t, z, lv)

  return samplers.compile_sampler(
    make_fns,
    sampling,
    sde_lib.from_config(config.sde),
    StepSpec.from_config(config.model, config.sde),
    shape,
    invert=invert,
    mesh=mesh,
  )


def make_encode_fn(enc_model):
  """jit(enc_params, x [N, H, W, C]) -> (mu, log_var) of q(z | x_0, t=0)."""

  def run(enc_params, x):
    return enc_model.apply(enc_params, x, jnp.zeros((x.shape[0],), jnp.float32))

  return jax.jit(run)


class VDAE(Autoencoder):
  """decode "sample" is one draw of the configured sampler (`sampling.method`, from
  x_1 ~ N(0, I)); "mode" is the PF ODE (`eval.mode_method`, eval.mode_num_steps
  steps) from x_1 = 0, the prior's mean, which for a Gaussian p(x | z) lands on
  E[x | z]. "inverted" (`reconstruct_inverted`) is Diff-AE's: x_0's own x_1 by the
  conditional PF ODE forwards, decoded back with the same solver and grid
  (sampling.invert_method, sampling.invert_num_steps)."""

  name = "vdae"
  invertible = True

  def __init__(
    self, config, score_params: Params, enc_params: Params, mesh, image_shape, latent_prior=None
  ):
    self.config, self.mesh, self.image_shape = config, mesh, tuple(image_shape)
    self.score_params, self.enc_params = score_params, enc_params
    self.latent_prior = latent_prior  # a latent.prior.LearnedPrior, or None: N(0, I)
    self.score_model = score.model_from_config(config.model, config.sde)
    self.encoder = encoder_lib.from_config(config.encoder, config.model, config.sde)
    self.latent_dim = config.encoder.latent_dim
    self._encode = make_encode_fn(self.encoder)
    self._decoders: dict[tuple, samplers.CompiledSampler] = {}

  @property
  def learned_prior(self) -> bool:
    return self.latent_prior is not None

  def prior_sample(self, n: int, key, standard_normal: bool = False) -> np.ndarray:
    if self.latent_prior is None or standard_normal:
      return super().prior_sample(n, key)
    return self.latent_prior.sample(n, key)

  def _global(self, a: np.ndarray) -> jax.Array:
    # A global input split over the batch axes, so that each device (and process)
    # decodes its own rows: every process holds the whole host array, and with
    # fsdp spanning processes a process-local array would not do.
    return sharding.batch_from_host(np.asarray(a, np.float32), self.mesh)

  def posterior(self, x):
    mu, lv = self._encode(self.enc_params, self._global(x))
    return sharding.to_host(mu), sharding.to_host(lv)

  def _method(self, protocol: str, method: str | None) -> tuple[str, int | None]:
    if method is not None:
      return method, None
    if check_protocol(protocol) == "mode":
      return self.config.eval.mode_method, self.config.eval.mode_num_steps
    return self.config.sampling.method, None

  def decoder(
    self,
    n: int,
    method: str | None = None,
    num_steps: int | None = None,
    invert: bool = False,
    denoise: bool | None = None,
  ) -> samplers.CompiledSampler:
    """The compiled sampler for batches of n codes (cached per its arguments)."""
    method = method or self.config.sampling.method
    key = (n, method, num_steps, invert, denoise)
    if key not in self._decoders:
      sampling = with_method(self.config.sampling, method, num_steps)
      if denoise is not None:
        with sampling.unlocked():
          sampling.denoise = denoise
      self._decoders[key] = make_decode_fn(
        self.score_model,
        self.encoder,
        self.config,
        sampling,
        (n, *self.image_shape),
        invert,
        self.mesh,
      )
    return self._decoders[key]

  def _inversion(self, n: int, invert: bool) -> samplers.CompiledSampler:
    # No denoise step either way: the round trip starts and ends at t = eps.
    sp = self.config.sampling
    return self.decoder(n, sp.invert_method, sp.invert_num_steps, invert, denoise=False)

  def invert(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """x_0 [B, ...] -> its x_1 under the PF ODE with the conditional score at z [B, L]."""
    args = (self.score_params, self.enc_params, self._global(z))
    return sharding.to_host(self._inversion(len(z), True)(args, jax.random.key(0), self._global(x)))

  def decode_inverted(self, z: np.ndarray, x_1: np.ndarray) -> np.ndarray:
    """z with the noise x_1 from `invert` -> x_0 (the same solver backwards)."""
    args = (self.score_params, self.enc_params, self._global(z))
    return sharding.to_host(
      self._inversion(len(z), False)(args, jax.random.key(0), self._global(x_1))
    )

  def reconstruct_inverted(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    return self.decode_inverted(z, self.invert(x, z))

  def decode(
    self,
    z,
    key,
    protocol: str = "sample",
    method: str | None = None,
    x_init: np.ndarray | None = None,
    num_steps: int | None = None,
  ):
    """`method` / `x_init` / `num_steps` override the protocol's sampler / starting
    noise / its steps."""
    method, steps = self._method(protocol, method)
    fn = self.decoder(len(z), method, num_steps or steps)
    if x_init is None and protocol == "mode":
      x_init = np.zeros((len(z), *self.image_shape), np.float32)
    x_init = None if x_init is None else self._global(x_init)
    out = fn((self.score_params, self.enc_params, self._global(z)), key, x_init)
    return sharding.to_host(out)

  def compile_decode(self, z, protocol: str = "sample", method: str | None = None) -> None:
    args = (self.score_params, self.enc_params, self._global(z))
    if protocol == "inverted":
      x = self._global(np.zeros((len(z), *self.image_shape), np.float32))
      for invert in (True, False):
        self._inversion(len(z), invert).precompile(args, jax.random.key(0), x)
      return
    protocol = "mode" if protocol == "mode" else "sample"
    x_init = np.zeros((len(z), *self.image_shape), np.float32) if protocol == "mode" else None
    self.decoder(len(z), *self._method(protocol, method)).precompile(
      args, jax.random.key(0), None if x_init is None else self._global(x_init)
    )

  def reconstruct(self, x: np.ndarray, key) -> np.ndarray:
    return self.decode(self.encode(x), key)

  def elbo_solver(self, seed: int):
    """solve(xb [b, ...], i, between) -> (-ELBO bits per dim [b], stats) of batch i:
    -log p(x | z) by the probability-flow ODE with the conditional score s_theta + c(z)
    (one z ~ q(z | x) per image), plus KL(q || N(0, I)), solved in pieces
    (likelihood.Pieces: `between` runs after each)."""
    ev, config = self.config.eval, self.config
    sde = sde_lib.from_config(config.sde)
    levels = sources.data_levels(config.data, config.eval)
    lv_term = config.encoder.logvar_term
    d = math.prod(self.image_shape)

    def prepare(enc_params, xb, key):
      k_deq, k_z, k_probe = jax.random.split(key, 3)
      mu, lv = self.encoder.apply(enc_params, xb, jnp.zeros((len(xb),)))
      z = mu + jnp.exp(0.5 * lv) * jax.random.normal(k_z, mu.shape)
      if ev.dequantize:
        xb = likelihood.dequantize(xb, levels, k_deq)
      return xb, z, correction.kl_standard_normal(mu, lv), k_probe

    def make_score_fn(args):
      score_params, enc_params, z = args
      eps_fn = score.eps_fn_for(self.score_model, score_params, config.model)
      encode_fn = lambda xt, t: self.encoder.apply(enc_params, xt, t)

      def score_fn(xt, t):
        s = score.eps_to_score(eps_fn(xt, t), sde.marginal(t)[1])
        return s + correction.correction_score(encode_fn, xt, t, z, lv_term)

      return score_fn

    # Hutchinson always: div c is the trace of the encoder's Hessian in x_t, D
    # forward-over-reverse passes per call if exact (60x the cost on digits).
    pieces = likelihood.Pieces(make_score_fn, sde, exact_max_dim=0, **likelihood.solver_options(ev))
    prepare = jax.jit(prepare)

    def solve(xb, i, between):
      xd, z, kl, k_probe = prepare(
        self.enc_params, self._global(xb), jax.random.key(seed + 200 + i)
      )
      logp, stats = pieces((self.score_params, self.enc_params, z), xd, k_probe, between)
      return likelihood.bits_per_dim(logp - kl, d, levels), stats

    return solve

  def neg_elbo_bits_per_dim(self, x: np.ndarray, seed: int, hooks=None) -> dict[str, float]:
    """-ELBO of x [N, ...] in bits per dim of the discrete data, the VAE's bound's
    counterpart (`elbo_solver`), dequantised like score_model/bits_per_dim so it bounds
    the discrete NLL; the divergence is Hutchinson's estimate (eval.hutchinson_probes),
    unbiased. {neg_elbo_bits_per_dim: NaN unless every solve reached t = 1 within
    eval.bpd_max_steps, neg_elbo_bits_per_dim_converged: the share that did,
    neg_elbo_solver_steps: mean steps per batch}."""
    out = likelihood.solve_batches(
      self.elbo_solver(seed), x, min(len(x), self.config.eval.batch_size), True, hooks
    )
    return likelihood.summary("neg_elbo_bits_per_dim", out, "neg_elbo_solver_steps")

  def extra_metrics(self, test_images, batch, seed, hooks=None):
    """neg_elbo_bits_per_dim (and its _converged, neg_elbo_solver_steps) on the first
    eval.elbo_num_images test images (`hooks`: likelihood.BatchHooks), and
    time_per_image_<method>: seconds per image of one batch of reconstructions
    with each of eval.timing_methods other than sampling.method (compile excluded)."""
    out = {}
    if self.config.eval.elbo_num_images:
      out.update(
        self.neg_elbo_bits_per_dim(test_images[: self.config.eval.elbo_num_images], seed, hooks)
      )
    mu = pipeline.pad_batch({"z": self.encode(test_images[:batch])}, batch)["z"]
    for method in self.config.eval.timing_methods:
      if not method or method == self.config.sampling.method:
        continue
      self.compile_decode(mu, method=method)
      t0 = time.perf_counter()
      self.decode(mu, jax.random.fold_in(jax.random.key(seed), 0), method=method)
      out[f"time_per_image_{method}"] = (time.perf_counter() - t0) / batch
    return out
