"""The VAE baseline's decoder network: z -> mean of a Gaussian p(x | z).

The stage-2 encoder run backwards: a dense map to the coarsest feature map,
residual blocks (the same `ResBlock` as the encoder), nearest-neighbour
upsampling plus a conv per level. The latent code, through a small MLP, also
conditions every block the way the time embedding conditions the encoder's, so
the two networks are of comparable size and shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdae.io.errors import ConfigError
from vdae.models.layers import ResBlock, group_norm
from vdae.models.network import Network


class VAEDecoder(nnx.Module):
  """z [B, L] -> mean [B, H, W, C] (float32, unconstrained)."""

  def __init__(
    self,
    in_shape: tuple[int],
    *,
    image_shape: tuple[int, int, int],
    channels: int = 32,
    channel_mults: Sequence[int] = (2, 1),  # coarsest level first
    num_res_blocks: int = 1,
    groups: int = 8,
    rngs: nnx.Rngs,
  ):
    (latent_dim,) = in_shape
    h_img, w_img, c_img = image_shape
    scale = 2 ** (len(channel_mults) - 1)
    if h_img % scale or w_img % scale:
      raise ConfigError(
        f"vae.decoder_channel_mults has {len(channel_mults)} levels, so the image side "
        f"must divide by {scale}; the images are {h_img}x{w_img}."
      )
    self.coarse = (h_img // scale, w_img // scale, channels * channel_mults[0])
    self.num_res_blocks, emb_dim = num_res_blocks, 4 * channels
    self.emb1 = nnx.Linear(latent_dim, emb_dim, rngs=rngs)
    self.emb2 = nnx.Linear(emb_dim, emb_dim, rngs=rngs)
    self.dense_in = nnx.Linear(emb_dim, math.prod(self.coarse), rngs=rngs)
    self.blocks, self.ups, ch = nnx.List(), nnx.List(), self.coarse[-1]
    for level, mult in enumerate(channel_mults):
      for _ in range(num_res_blocks):
        self.blocks.append(ResBlock(ch, channels * mult, emb_dim, groups, rngs=rngs))
        ch = channels * mult
      if level != len(channel_mults) - 1:
        self.ups.append(nnx.Conv(ch, ch, (3, 3), rngs=rngs))
    self.norm = group_norm(ch, groups, jnp.float32, rngs)
    self.conv_out = nnx.Conv(ch, c_img, (3, 3), rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    emb = self.emb2(nnx.silu(self.emb1(z)))
    h = self.dense_in(nnx.silu(emb)).reshape(z.shape[0], *self.coarse)
    blocks = iter(self.blocks)
    for up in [*self.ups, None]:
      for _ in range(self.num_res_blocks):
        h = next(blocks)(h, emb, False)
      if up is not None:
        b, hh, ww, c = h.shape
        h = up(jax.image.resize(h, (b, 2 * hh, 2 * ww, c), "nearest"))
    return self.conv_out(nnx.silu(self.norm(h))).astype(jnp.float32)


def from_config(vae_cfg, enc_cfg, image_shape: tuple[int, int, int]) -> Network:
  return Network(
    VAEDecoder,
    image_shape=tuple(image_shape),
    channels=vae_cfg.decoder_channels,
    channel_mults=tuple(vae_cfg.decoder_channel_mults),
    num_res_blocks=vae_cfg.decoder_num_res_blocks,
    groups=enc_cfg.groups,
  )
