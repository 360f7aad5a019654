"""The score network: a time-conditioned U-Net noise predictor eps_theta(x_t, t) (DDPM++ flavour).

Residual blocks with GroupNorm and a time-embedding shift, optional
self-attention at chosen resolutions, one downsampling per level. Works for any
H, W that the levels divide (8x8 digits with two levels, 28x28, 32x32, 64x64).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdae.models import embedding
from vdae.models.layers import AttnBlock, ResBlock, group_count


class UNet(nn.Module):
  """eps_theta(x [B, H, W, C], t [B]) -> [B, H, W, out_channels or C] (float32 output)."""

  channels: int = 64
  channel_mults: Sequence[int] = (1, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = ()
  dropout: float = 0.0
  groups: int = 8
  embedding: str = "sinusoidal"
  temb_dim: int = 64
  time_scale: float = 1000.0
  fourier_scale: float = 16.0
  min_time: float = 1e-3  # Fourier features of log t: t is clamped here (sde.eps)
  dtype: jnp.dtype = jnp.float32
  out_channels: int | None = None  # None: the input's (a conditioned net has more inputs)

  @nn.compact
  def __call__(
    self, x: jax.Array, t: jax.Array, train: bool = False, temb: jax.Array | None = None
  ) -> jax.Array:
    out_ch = self.out_channels or x.shape[-1]
    emb = embedding.for_network(self, 4 * self.channels)(t, temb)
    block = lambda ch: ResBlock(ch, self.groups, self.dropout, self.dtype)
    h = nn.Conv(self.channels, (3, 3), dtype=self.dtype)(x.astype(self.dtype))
    skips = [h]
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = block(self.channels * mult)(h, emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.groups, self.dtype)(h)
        skips.append(h)
      if level != len(self.channel_mults) - 1:
        h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)
        skips.append(h)
    h = block(h.shape[-1])(h, emb, train)
    h = AttnBlock(self.groups, self.dtype)(h)
    h = block(h.shape[-1])(h, emb, train)
    for level, mult in reversed(list(enumerate(self.channel_mults))):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.channels * mult)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if h.shape[1] in self.attn_resolutions:
          h = AttnBlock(self.groups, self.dtype)(h)
      if level != 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, skips[-1].shape[1], skips[-1].shape[2], c), "nearest")
        h = nn.Conv(c, (3, 3), dtype=self.dtype)(h)
    assert not skips
    h = nn.silu(nn.GroupNorm(group_count(h.shape[-1], self.groups), dtype=self.dtype)(h))
    h = nn.Conv(out_ch, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    return h.astype(jnp.float32)


def from_config(model_cfg, sde_cfg) -> UNet:
  return UNet(
    channels=model_cfg.channels,
    channel_mults=tuple(model_cfg.channel_mults),
    num_res_blocks=model_cfg.num_res_blocks,
    attn_resolutions=tuple(model_cfg.attn_resolutions),
    dropout=model_cfg.dropout,
    groups=model_cfg.groups,
    embedding=model_cfg.embedding,
    temb_dim=model_cfg.temb_dim,
    time_scale=sde_cfg.time_scale,
    fourier_scale=model_cfg.fourier_scale,
    min_time=sde_cfg.eps,
    dtype=jnp.dtype(model_cfg.dtype),
  )
