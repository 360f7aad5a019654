"""Time-dependent encoder E_phi(x_t, t) -> (mu, log_var) of q_phi(z | x_t, t).

Residual conv blocks conditioned on the same kind of time embedding as the
score network, then a dense head. Only per-example layers (GroupNorm, no
BatchNorm): the latent-correction score relies on each example's log-density
depending on its own x_t alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from vdae.models.embedding import TimeEmbedding
from vdae.models.layers import ResBlock, group_norm
from vdae.models.network import Network


class Encoder(nnx.Module):
  """x [B, H, W, C], t [B] -> mu [B, L], log_var [B, L] (float32)."""

  def __init__(
    self,
    in_shape: tuple[int, int, int],
    *,
    latent_dim: int = 16,
    channels: int = 32,
    channel_mults: Sequence[int] = (1, 2),
    num_res_blocks: int = 1,
    groups: int = 8,
    embedding: str = "sinusoidal",
    temb_dim: int = 64,
    time_scale: float = 1000.0,
    fourier_scale: float = 16.0,
    min_time: float = 1e-3,  # Fourier features of log t: t = 0 (clean x) is clamped here
    dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    side_h, side_w, in_ch = in_shape
    emb_dim, self.dtype, self.num_res_blocks = 4 * channels, dtype, num_res_blocks
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)
    self.temb = TimeEmbedding(
      embedding, temb_dim, emb_dim, time_scale, fourier_scale, min_time, dtype, rngs=rngs
    )
    self.conv_in = nnx.Conv(in_ch, channels, (3, 3), dtype=dtype, rngs=rngs)
    self.blocks, self.downs, ch = nnx.List(), nnx.List(), channels
    for level, mult in enumerate(channel_mults):
      for _ in range(num_res_blocks):
        self.blocks.append(ResBlock(ch, channels * mult, emb_dim, groups, 0.0, dtype, rngs=rngs))
        ch = channels * mult
      if level != len(channel_mults) - 1:
        self.downs.append(nnx.Conv(ch, ch, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs))
        side_h, side_w = -(-side_h // 2), -(-side_w // 2)  # SAME padding, stride 2
    self.norm = group_norm(ch, groups, dtype, rngs)
    self.hidden = linear(side_h * side_w * ch, emb_dim)
    self.emb_proj = linear(emb_dim, emb_dim)
    self.out = linear(emb_dim, 2 * latent_dim)

  def __call__(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    emb = self.temb(t)
    h = self.conv_in(x.astype(self.dtype))
    blocks = iter(self.blocks)
    for down in [*self.downs, None]:
      for _ in range(self.num_res_blocks):
        h = next(blocks)(h, emb, False)
      if down is not None:
        h = down(h)
    h = nnx.silu(self.norm(h)).reshape(h.shape[0], -1)
    h = nnx.silu(self.hidden(h)) + self.emb_proj(nnx.silu(emb))
    out = self.out(h).astype(jnp.float32)
    mu, log_var = jnp.split(out, 2, axis=-1)
    # Soft-clip log-variance: keeps exp(-log_var) in log q finite early on.
    log_var = 8.0 * jnp.tanh(log_var / 8.0)
    return mu, log_var


def from_config(enc_cfg, model_cfg, sde_cfg) -> Network:
  return Network(
    Encoder,
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


def init_params(model: Network, key: jax.Array, image_shape: tuple[int, ...]):
  """The encoder's parameters for images of `image_shape` [H, W, C]."""
  return model.init(key, image_shape)
