"""The VAE baseline's decoder network: z -> mean of a Gaussian p(x | z).

The stage-2 encoder run backwards: a dense map to the coarsest feature map,
residual blocks (the same `ResBlock` as the encoder), nearest-neighbour
upsampling plus a conv per level. The latent code, through a small MLP, also
conditions every block the way the time embedding conditions the encoder's, so
the two networks are of comparable size and shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdae.io.errors import ConfigError
from vdae.models.layers import ResBlock, group_count


class VAEDecoder(nn.Module):
  """z [B, L] -> mean [B, H, W, C] (float32, unconstrained)."""

  image_shape: tuple[int, int, int]
  channels: int = 32
  channel_mults: Sequence[int] = (2, 1)  # coarsest level first
  num_res_blocks: int = 1
  groups: int = 8

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    h_img, w_img, c_img = self.image_shape
    scale = 2 ** (len(self.channel_mults) - 1)
    if h_img % scale or w_img % scale:
      raise ConfigError(
        f"vae.decoder_channel_mults has {len(self.channel_mults)} levels, so the image side "
        f"must divide by {scale}; the images are {h_img}x{w_img}."
      )
    emb = nn.silu(nn.Dense(4 * self.channels)(z))
    emb = nn.Dense(4 * self.channels)(emb)
    ch0 = self.channels * self.channel_mults[0]
    h = nn.Dense((h_img // scale) * (w_img // scale) * ch0)(nn.silu(emb))
    h = h.reshape(z.shape[0], h_img // scale, w_img // scale, ch0)
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.num_res_blocks):
        h = ResBlock(self.channels * mult, self.groups)(h, emb, False)
      if level != len(self.channel_mults) - 1:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest")
        h = nn.Conv(c, (3, 3))(h)
    h = nn.silu(nn.GroupNorm(group_count(h.shape[-1], self.groups))(h))
    return nn.Conv(c_img, (3, 3))(h).astype(jnp.float32)


def from_config(vae_cfg, enc_cfg, image_shape: tuple[int, int, int]) -> VAEDecoder:
  return VAEDecoder(
    image_shape=tuple(image_shape),
    channels=vae_cfg.decoder_channels,
    channel_mults=tuple(vae_cfg.decoder_channel_mults),
    num_res_blocks=vae_cfg.decoder_num_res_blocks,
    groups=enc_cfg.groups,
  )
