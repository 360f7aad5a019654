"""Time embeddings shared by the score network and the encoder (sinusoidal, Fourier)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class FourierFeatures(nn.Module):
  """Gaussian random Fourier features of log-time (Song et al. 2021), not trained."""

  dim: int
  scale: float = 16.0
  # log t is -inf at t = 0 (where the encoder sees clean images): t is clamped
  # to the SDE's smallest time, where x_t is x_0 up to sigma(eps) noise.
  min_time: float = 1e-3

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    w = self.param("w", nn.initializers.normal(self.scale), (self.dim // 2,))
    w = jax.lax.stop_gradient(w)
    t = jnp.maximum(t.astype(jnp.float32), self.min_time)
    arg = jnp.log(t)[:, None] * w[None, :] * 2 * math.pi
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class TimeEmbedding(nn.Module):
  """Raw time features -> 2-layer MLP of width `out_dim`.

  `temb` lets a caller pass precomputed sinusoidal features (the fused decoding
  step computes them for the next time while it updates x).
  """

  kind: str
  raw_dim: int
  out_dim: int
  time_scale: float
  fourier_scale: float = 16.0
  min_time: float = 1e-3
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    if temb is None:
      if schema.require("model.embedding", self.kind, KINDS) == "sinusoidal":
        temb = sinusoidal(t, self.raw_dim, self.time_scale)
      else:
        temb = FourierFeatures(self.raw_dim, self.fourier_scale, self.min_time)(t)
    h = nn.Dense(self.out_dim, dtype=self.dtype)(temb)
    return nn.Dense(self.out_dim, dtype=self.dtype)(nn.silu(h))


def for_network(net: nn.Module, out_dim: int) -> TimeEmbedding:
  """The time embedding of a network with the usual fields (`embedding`, `temb_dim`,
  `time_scale`, `fourier_scale`, `min_time`, `dtype`); call it inside its compact method."""
  return TimeEmbedding(
    net.embedding, net.temb_dim, out_dim, net.time_scale, net.fourier_scale, net.min_time, net.dtype
  )
