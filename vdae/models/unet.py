"""The score network: a time-conditioned U-Net noise predictor eps_theta(x_t, t) (DDPM++ flavour).

Residual blocks with GroupNorm and a time-embedding shift, optional
self-attention at chosen resolutions, one downsampling per level. Works for any
H, W that the levels divide (8x8 digits with two levels, 28x28, 32x32, 64x64).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdae.models.embedding import TimeEmbedding
from vdae.models.layers import AttnBlock, ResBlock, group_norm
from vdae.models.network import Network


class UNet(nnx.Module):
  """eps_theta(x [B, H, W, C], t [B]) -> [B, H, W, out_channels or C] (float32 output).

  Modules of one type are declared in their checkpoint order (vdae/models/network.py):
  the down path's, the middle's, then the up path's.
  """

  def __init__(
    self,
    in_shape: tuple[int, int, int],
    *,
    channels: int = 64,
    channel_mults: Sequence[int] = (1, 2),
    num_res_blocks: int = 2,
    attn_resolutions: Sequence[int] = (),
    dropout: float = 0.0,
    groups: int = 8,
    embedding: str = "sinusoidal",
    temb_dim: int = 64,
    time_scale: float = 1000.0,
    fourier_scale: float = 16.0,
    min_time: float = 1e-3,  # Fourier features of log t: t is clamped here (sde.eps)
    dtype=jnp.float32,
    out_channels: int | None = None,  # None: the input's (a conditioned net has more inputs)
    rngs: nnx.Rngs,
  ):
    side, _, in_ch = in_shape
    self.attn_resolutions, self.dtype = tuple(attn_resolutions), dtype
    self.num_res_blocks = num_res_blocks
    emb_dim, last = 4 * channels, len(channel_mults) - 1
    block = lambda i, o: ResBlock(i, o, emb_dim, groups, dropout, dtype, rngs=rngs)
    attn = lambda ch: AttnBlock(ch, groups, dtype, rngs=rngs)
    conv = lambda i, o, **kw: nnx.Conv(i, o, (3, 3), dtype=dtype, rngs=rngs, **kw)
    self.temb = TimeEmbedding(
      embedding, temb_dim, emb_dim, time_scale, fourier_scale, min_time, dtype, rngs=rngs
    )
    self.conv_in = conv(in_ch, channels)
    # The skips' channels and sides, as the forward pass pushes them.
    ch, skips = channels, [(channels, side)]
    self.down_blocks, self.down_attn, self.down_convs = nnx.List(), nnx.List(), nnx.List()
    for level, mult in enumerate(channel_mults):
      for _ in range(num_res_blocks):
        self.down_blocks.append(block(ch, channels * mult))
        ch = channels * mult
        if side in self.attn_resolutions:
          self.down_attn.append(attn(ch))
        skips.append((ch, side))
      if level != last:
        self.down_convs.append(conv(ch, ch, strides=(2, 2)))
        side = -(-side // 2)  # SAME padding, stride 2
        skips.append((ch, side))
    self.mid_block1, self.mid_attn, self.mid_block2 = block(ch, ch), attn(ch), block(ch, ch)
    self.up_blocks, self.up_attn, self.up_convs = nnx.List(), nnx.List(), nnx.List()
    for level, mult in reversed(list(enumerate(channel_mults))):
      for _ in range(num_res_blocks + 1):
        self.up_blocks.append(block(ch + skips.pop()[0], channels * mult))
        ch = channels * mult
        if side in self.attn_resolutions:
          self.up_attn.append(attn(ch))
      if level != 0:
        side = skips[-1][1]
        self.up_convs.append(conv(ch, ch))
    self.norm_out = group_norm(ch, groups, dtype, rngs)
    self.conv_out = conv(ch, out_channels or in_ch, kernel_init=nnx.initializers.zeros)

  def __call__(
    self,
    x: jax.Array,
    t: jax.Array,
    train: bool = False,
    temb: jax.Array | None = None,
    *,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    emb = self.temb(t, temb)
    blocks, attns = iter(self.down_blocks), iter(self.down_attn)
    h = self.conv_in(x.astype(self.dtype))
    skips = [h]
    for down in [*self.down_convs, None]:
      for _ in range(self.num_res_blocks):
        h = next(blocks)(h, emb, train, rngs)
        if h.shape[1] in self.attn_resolutions:
          h = next(attns)(h)
        skips.append(h)
      if down is not None:
        h = down(h)
        skips.append(h)
    h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb, train, rngs)), emb, train, rngs)
    blocks, attns = iter(self.up_blocks), iter(self.up_attn)
    for up in [*self.up_convs, None]:
      for _ in range(self.num_res_blocks + 1):
        h = next(blocks)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train, rngs)
        if h.shape[1] in self.attn_resolutions:
          h = next(attns)(h)
      if up is not None:
        b, _, _, c = h.shape
        h = up(jax.image.resize(h, (b, skips[-1].shape[1], skips[-1].shape[2], c), "nearest"))
    assert not skips
    h = self.conv_out(nnx.silu(self.norm_out(h)))
    return h.astype(jnp.float32)


def from_config(model_cfg, sde_cfg) -> Network:
  return Network(
    UNet,
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
