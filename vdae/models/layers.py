"""Building blocks shared by the networks: residual block, self-attention, GroupNorm sizing.

Only per-example layers (GroupNorm, never BatchNorm): the latent-correction
score and the exact likelihood divergence rely on each example's output
depending on its own input alone.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_count(channels: int, groups: int) -> int:
  """Largest divisor of `channels` that is <= `groups` (GroupNorm needs one)."""
  g = min(groups, channels)
  while channels % g:
    g -= 1
  return g


class ResBlock(nn.Module):
  out_ch: int
  groups: int
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    h = nn.GroupNorm(group_count(x.shape[-1], self.groups), dtype=self.dtype)(x)
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(nn.silu(h))
    h = h + nn.Dense(self.out_ch, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
    h = nn.GroupNorm(group_count(self.out_ch, self.groups), dtype=self.dtype)(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    # Zero-init the last conv so each block starts as the identity.
    h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Conv(self.out_ch, (1, 1), dtype=self.dtype)(x)
    return (x + h) / jnp.sqrt(2.0).astype(h.dtype)


class AttnBlock(nn.Module):
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hh, ww, c = x.shape
    h = nn.GroupNorm(group_count(c, self.groups), dtype=self.dtype)(x).reshape(b, hh * ww, c)
    h = nn.MultiHeadDotProductAttention(
      num_heads=1, dtype=self.dtype, out_kernel_init=nn.initializers.zeros
    )(h)
    return (x + h.reshape(b, hh, ww, c)) / jnp.sqrt(2.0).astype(h.dtype)
