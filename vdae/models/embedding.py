"""Time embeddings shared by the score network and the encoder (sinusoidal, Fourier)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vdae import schema

KINDS = ("sinusoidal", "fourier")  # model.embedding


def sinusoidal(
  t: jax.Array, dim: int, time_scale: float, flip_sin_to_cos: bool = False, freq_shift: float = 1.0
) -> jax.Array:
  """Transformer-style features of `t * time_scale`: t [B] -> [B, dim].

  Half sines, half cosines (cosines first when flip_sin_to_cos), frequencies
  10000^(-k / (half - freq_shift)), k = 0..half-1; an odd dim gets a zero
  column. The defaults are vdae's own networks' (frequencies from 1 to 1/10000)
  and the features the fused Pallas step (vdae/kernels) computes for the next
  time; diffusers' UNet2DModel states both fields in its config.
  """
  half = dim // 2
  denom = half - freq_shift
  if denom <= 0:  # a 2-wide embedding with shift 1: one frequency, 1
    denom = 1.0
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / denom)
  arg = (t.astype(jnp.float32) * time_scale)[:, None] * freqs[None, :]
  parts = [jnp.cos(arg), jnp.sin(arg)] if flip_sin_to_cos else [jnp.sin(arg), jnp.cos(arg)]
  if dim % 2:
    parts.append(jnp.zeros_like(arg[:, :1]))
  return jnp.concatenate(parts, axis=-1)


class FourierFeatures(nnx.Module):
  """Gaussian random Fourier features of log-time (Song et al. 2021), not trained."""

  def __init__(self, dim: int, scale: float = 16.0, min_time: float = 1e-3, *, rngs: nnx.Rngs):
    self.w = nnx.Param(scale * jax.random.normal(rngs.params(), (dim // 2,)))
    # log t is -inf at t = 0 (where the encoder sees clean images): t is clamped to the
    # SDE's smallest time, where x_t is x_0 up to sigma(eps) noise.
    self.min_time = min_time

  def __call__(self, t: jax.Array) -> jax.Array:
    w = jax.lax.stop_gradient(self.w[...])
    t = jnp.maximum(t.astype(jnp.float32), self.min_time)
    arg = jnp.log(t)[:, None] * w[None, :] * 2 * math.pi
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class TimeEmbedding(nnx.Module):
  """Raw time features -> 2-layer MLP of width `out_dim`.

  `temb` lets a caller pass precomputed sinusoidal features (the fused decoding
  step computes them for the next time while it updates x).
  """

  def __init__(
    self,
    kind: str,
    raw_dim: int,
    out_dim: int,
    time_scale: float,
    fourier_scale: float = 16.0,
    min_time: float = 1e-3,
    dtype=jnp.float32,
    *,
    rngs: nnx.Rngs,
  ):
    self.kind = schema.require("model.embedding", kind, KINDS)
    self.raw_dim, self.time_scale = raw_dim, time_scale
    if self.kind == "fourier":
      self.fourier = FourierFeatures(raw_dim, fourier_scale, min_time, rngs=rngs)
    self.dense1 = nnx.Linear(raw_dim, out_dim, dtype=dtype, rngs=rngs)
    self.dense2 = nnx.Linear(out_dim, out_dim, dtype=dtype, rngs=rngs)

  def __call__(self, t: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    if temb is None:
      if self.kind == "sinusoidal":
        temb = sinusoidal(t, self.raw_dim, self.time_scale)
      else:
        temb = self.fourier(t)
    return self.dense2(nnx.silu(self.dense1(temb)))
