"""The learned latent prior: a small diffusion model over the encoder's codes.

z ~ N(0, I) decoded gives poor samples because the encoder's aggregate posterior
q(z) = E_x q(z | x) is not N(0, I). Like Diff-AE's and PDAE's "latent DDIM", a
residual MLP learns to denoise codes z ~ q(z | x_0) drawn afresh from the
training images every step, normalised per dimension by the aggregate
posterior's mean and standard deviation (computed once, exactly, from the
posterior means and variances over the training split, and recorded in the
stage's checkpoints). q(z | x_0) is a fixed Gaussian per image (the encoder is
frozen), so its mean and variance are computed once per image (and per mirror
image when flips are on) and each step draws z = mu + sigma eps from that table
(`PosteriorTable`): the same codes as encoding the batch every step, without the
encoder pass. It is trained with the image model's SDE and denoising
score matching, and sampled with the image model's samplers
(`diffusion/samplers.py`): z = shift + scale * (a sample of the normalised model).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdae.diffusion import losses, samplers
from vdae.diffusion import sde as sde_lib
from vdae.kernels.reference import StepSpec
from vdae.models.embedding import sinusoidal
from vdae.models.network import Network
from vdae.parallel import sharding
from vdae.types import Array, Params


class LatentDenoiser(nnx.Module):
  """eps(z_t [B, L], t [B]) -> [B, L]: residual MLP blocks (LayerNorm, SiLU, the
  time embedding added in each block), the output layer zero-initialised."""

  def __init__(
    self,
    in_shape: tuple[int],
    *,
    latent_dim: int,
    width: int = 512,
    depth: int = 4,
    temb_dim: int = 64,
    time_scale: float = 1000.0,
    rngs: nnx.Rngs,
  ):
    if tuple(in_shape) != (latent_dim,):
      raise ValueError(f"codes of shape {in_shape} for a denoiser of {latent_dim} dimensions")
    self.temb_dim, self.time_scale = temb_dim, time_scale
    linear = lambda i, o, **kw: nnx.Linear(i, o, rngs=rngs, **kw)
    # Dense layers in their checkpoint order (vdae/models/network.py): the outer layer
    # of each pair first, as Linen named them.
    self.temb2, self.temb1 = linear(width, width), linear(temb_dim, width)
    self.z_in = linear(latent_dim, width)
    self.norms = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(depth + 1)])
    self.pairs = nnx.List([linear(width, width) for _ in range(2 * depth)])  # (2nd, 1st)
    self.out = linear(width, latent_dim, kernel_init=nnx.initializers.zeros)

  def __call__(self, z: Array, t: Array) -> Array:
    emb = sinusoidal(t, self.temb_dim, self.time_scale)
    emb = self.temb2(nnx.silu(self.temb1(emb)))
    h = self.z_in(z)
    for i in range(len(self.pairs) // 2):
      r = nnx.silu(self.norms[i](h)) + emb
      h = h + self.pairs[2 * i](nnx.silu(self.pairs[2 * i + 1](r)))
    return self.out(nnx.silu(self.norms[-1](h)))


def model_from_config(prior, latent_dim: int, time_scale: float) -> Network:
  """The denoiser of the `prior` group for codes of latent_dim (encoder.latent_dim),
  its time scaled like the score network's (sde.time_scale)."""
  return Network(
    LatentDenoiser,
    latent_dim=latent_dim,
    width=prior.width,
    depth=prior.depth,
    temb_dim=prior.temb_dim,
    time_scale=time_scale,
  )


def init_params(model: Network, key) -> Params:
  return model.init(key, (model.latent_dim,))


@dataclasses.dataclass(frozen=True)
class Normaliser:
  """Per-dimension shift and scale of the aggregate posterior q(z) (each [L])."""

  shift: np.ndarray
  scale: np.ndarray

  @classmethod
  def from_posteriors(cls, mu: np.ndarray, log_var: np.ndarray) -> Normaliser:
    """q(z)'s exact mean and std from the posteriors N(mu_i, exp(log_var_i)) of the
    training images: mean(mu), and var(mu) + mean(exp(log_var)) (total variance)."""
    mu, var = np.asarray(mu, np.float64), np.exp(np.asarray(log_var, np.float64))
    shift = mu.mean(0)
    scale = np.sqrt(mu.var(0) + var.mean(0))
    return cls(shift.astype(np.float32), np.maximum(scale, 1e-6).astype(np.float32))

  def meta(self) -> dict:
    return {"code_shift": self.shift.tolist(), "code_scale": self.scale.tolist()}

  @classmethod
  def from_meta(cls, meta: dict) -> Normaliser:
    return cls(
      np.asarray(meta["code_shift"], np.float32), np.asarray(meta["code_scale"], np.float32)
    )


@dataclasses.dataclass(frozen=True)
class PosteriorTable:
  """q(z | x_0) of every training image: mean and log-variance [F, R, L] by flip
  (F = 2 when the data pipeline mirrors images: index 1 is the mirrored image's) and
  by the image's source row (a batch's `index`; rows outside the split stay 0)."""

  mu: np.ndarray
  log_var: np.ndarray

  @staticmethod
  def nbytes_for(rows: int, latent_dim: int, flips: bool) -> int:
    return 2 * (2 if flips else 1) * rows * latent_dim * 4

  @classmethod
  def from_rows(cls, rows: np.ndarray, posteriors: list[tuple[np.ndarray, np.ndarray]]):
    """posteriors[f] = (mu [N, L], log_var [N, L]) of the split's images in order (f: the
    flip), rows [N] their source rows."""
    shape = (len(posteriors), int(rows.max()) + 1, posteriors[0][0].shape[1])
    mu, lv = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for f, (m, v) in enumerate(posteriors):
      mu[f, rows], lv[f, rows] = m, v
    return cls(mu, lv)


def _dsm_on_codes(model, sde, params, mu, log_var, key, shift, scale):
  """DSM on the normalised draw z = mu + sigma eps of q(z | x_0)."""
  k_z, k_dsm = jax.random.split(key)
  z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(k_z, mu.shape)
  zn = (jax.lax.stop_gradient(z) - shift) / scale
  return losses.dsm_loss(lambda zt, t: model.apply(params, zt, t), zn, k_dsm, sde, False)


def prior_loss(model: Network, encode_fn, sde: sde_lib.SDE):
  """loss_fn(params, batch, key, (enc_params, shift, scale)): DSM on normalised codes
  z ~ q(z | x_0) of the batch's images, encoded every step (for splits whose
  `PosteriorTable` would not fit in memory)."""

  def loss_fn(params, batch, key, frozen):
    enc_params, shift, scale = frozen
    mu, log_var = encode_fn(enc_params, batch["image"])
    return _dsm_on_codes(model, sde, params, mu, log_var, key, shift, scale)

  return loss_fn


def prior_loss_from_table(model: Network, sde: sde_lib.SDE):
  """loss_fn(params, batch, key, (mu, log_var, shift, scale)) with a `PosteriorTable`'s
  arrays: `prior_loss` without the encoder, the batch's posteriors looked up by its
  images' `index` and `flipped`."""

  def loss_fn(params, batch, key, frozen):
    mu_t, lv_t, shift, scale = frozen
    f = batch["flipped"].astype(jnp.int32) if mu_t.shape[0] > 1 else 0
    i = batch["index"]
    return _dsm_on_codes(model, sde, params, mu_t[f, i], lv_t[f, i], key, shift, scale)

  return loss_fn


def sampling_config(sampling, prior):
  """The `sampling` group with the `prior` group's own method and step count."""
  cfg = sampling.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.method, cfg.num_steps = prior.sample_method, prior.sample_num_steps
  return cfg


class LearnedPrior:
  """sample(n, key) -> z [n, L] from the trained latent model (numpy)."""

  def __init__(self, config, params: Params, norm: Normaliser):
    self.config, self.params, self.norm = config, params, norm
    self.model = model_from_config(config.prior, config.encoder.latent_dim, config.sde.time_scale)
    self.sde = sde_lib.from_config(config.sde)
    self.spec = StepSpec(self.sde, config.prior.temb_dim, config.sde.time_scale)
    self._samplers: dict[int, samplers.CompiledSampler] = {}

  def sampler(self, n: int) -> samplers.CompiledSampler:
    if n not in self._samplers:
      model = self.model
      self._samplers[n] = samplers.compile_sampler(
        lambda params: (lambda z, t, temb=None: model.apply(params, z, t), None),
        sampling_config(self.config.sampling, self.config.prior),
        self.sde,
        self.spec,
        (n, model.latent_dim),
      )
    return self._samplers[n]

  def sample(self, n: int, key) -> np.ndarray:
    zn = sharding.to_host(self.sampler(n)(self.params, key))
    return self.norm.shift + self.norm.scale * zn
