"""Time-dependent encoder E_phi(x_t, t) -> (mu, log_var) of q_phi(z | x_t, t).

Residual conv blocks conditioned on the same kind of time embedding as the
score network, then a dense head. Only per-example layers (GroupNorm, no
BatchNorm): the latent-correction score relies on each example's log-density
depending on its own x_t alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdae.models import embedding
from vdae.models.layers import ResBlock, group_count


class Encoder(nn.Module):
  """x [B, H, W, C], t [B] -> mu [B, L], log_var [B, L] (float32)."""

  latent_dim: int = 16
  channels: int = 32
  channel_mults: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  groups: int = 8
  embedding: str = "sinusoidal"
  temb_dim: int = 64
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  min_time: float = 1e-3  # Fourier features of log t: t = 0 (clean x) is clamped here
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    emb = embedding.for_network(self, 4 * self.channels)(t)
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.channels * mult, self.groups, 0.0, self.dtype)(h, emb, False)
      if level != len(self.channel_mults) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)
    h = nn.silu(nn.GroupNorm(group_count(h.shape[-1], self.groups), dtype=self.dtype)(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.silu(nn.Dense(4 * self.channels, dtype=self.dtype)(h))
    h = h + nn.Dense(4 * self.channels, dtype=self.dtype)(nn.silu(emb))
    out = nn.Dense(2 * self.latent_dim, dtype=self.dtype)(h).astype(jnp.float32)
    mu, log_var = jnp.split(out, 2, axis=-1)
    # Soft-clip log-variance: keeps exp(-log_var) in log q finite early on.
    log_var = 8.0 * jnp.tanh(log_var / 8.0)
    return mu, log_var


def from_config(enc_cfg, model_cfg, sde_cfg) -> Encoder:
  return Encoder(
    latent_dim=enc_cfg.latent_dim,
    channels=enc_cfg.channels,
    channel_mults=tuple(enc_cfg.channel_mults),
    num_res_blocks=enc_cfg.num_res_blocks,
    groups=enc_cfg.groups,
    embedding=model_cfg.embedding,
    temb_dim=model_cfg.temb_dim,
    time_scale=sde_cfg.time_scale,
    fourier_scale=model_cfg.fourier_scale,
    min_time=sde_cfg.eps,
    dtype=jnp.dtype(model_cfg.dtype),
  )


def init_params(model: Encoder, key: jax.Array, image_shape: tuple[int, ...]):
  """The encoder's parameters for images of `image_shape` [H, W, C]."""
  return model.init(key, jnp.zeros((1, *image_shape), jnp.float32), jnp.zeros((1,)))["params"]
