"""Building blocks shared by the networks: residual block, self-attention, GroupNorm sizing.

Only per-example layers (GroupNorm, never BatchNorm): the latent-correction
score and the exact likelihood divergence rely on each example's output
depending on its own input alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def group_count(channels: int, groups: int) -> int:
  """Largest divisor of `channels` that is <= `groups` (GroupNorm needs one)."""
  g = min(groups, channels)
  while channels % g:
    g -= 1
  return g


def group_norm(channels: int, groups: int, dtype, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(channels, num_groups=group_count(channels, groups), dtype=dtype, rngs=rngs)


class ResBlock(nnx.Module):
  """x [B, H, W, in_ch], emb [B, emb_dim] -> [B, H, W, out_ch]."""

  def __init__(
    self,
    in_ch: int,
    out_ch: int,
    emb_dim: int,
    groups: int,
    dropout: float = 0.0,
    dtype=jnp.float32,
    *,
    rngs: nnx.Rngs,
  ):
    self.norm1 = group_norm(in_ch, groups, dtype, rngs)
    self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), dtype=dtype, rngs=rngs)
    self.emb_proj = nnx.Linear(emb_dim, out_ch, dtype=dtype, rngs=rngs)
    self.norm2 = group_norm(out_ch, groups, dtype, rngs)
    self.dropout = nnx.Dropout(dropout)
    # Zero-init the last conv so each block starts as the identity.
    zeros = nnx.initializers.zeros
    self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), dtype=dtype, kernel_init=zeros, rngs=rngs)
    self.skip = nnx.Conv(in_ch, out_ch, (1, 1), dtype=dtype, rngs=rngs) if in_ch != out_ch else None

  def __call__(self, x: jax.Array, emb: jax.Array, train: bool, rngs=None) -> jax.Array:
    h = self.conv1(nnx.silu(self.norm1(x)))
    h = h + self.emb_proj(nnx.silu(emb))[:, None, None, :]
    h = self.dropout(nnx.silu(self.norm2(h)), deterministic=not train, rngs=rngs)
    h = self.conv2(h)
    if self.skip is not None:
      x = self.skip(x)
    return (x + h) / jnp.sqrt(2.0).astype(h.dtype)


class AttnBlock(nnx.Module):
  """Single-head self-attention over the H*W positions, with a residual."""

  def __init__(self, channels: int, groups: int, dtype=jnp.float32, *, rngs: nnx.Rngs):
    self.norm = group_norm(channels, groups, dtype, rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=1,
      in_features=channels,
      dtype=dtype,
      out_kernel_init=nnx.initializers.zeros,
      decode=False,
      deterministic=True,
      keep_rngs=False,
      rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    b, hh, ww, c = x.shape
    h = self.attn(self.norm(x).reshape(b, hh * ww, c))
    return (x + h.reshape(b, hh, ww, c)) / jnp.sqrt(2.0).astype(h.dtype)
