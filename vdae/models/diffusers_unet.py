"""diffusers' `UNet2DModel`, the unconditional pixel-space U-Net of DDPM checkpoints, in Flax.

Written from what the fields of its `config.json` mean, so that a checkpoint's
tensors (vdae/io/pretrained.py maps them) give the same outputs as diffusers
(tests/unit/diffusers_unet_test.py checks committed fixtures to 1e-4). Modules
are named after diffusers' (`down_blocks_0/resnets_1/conv1`), which keeps the
tensor mapping a renaming. Layout is NHWC; the timestep input is the network's
own (discrete-scale) timestep, e.g. 0..999, not vdae's t in [0, 1].

`UNetSpec.from_json` accepts exactly the configurations implemented here and
refuses anything else (cross-attention, class conditioning, Fourier or learned
time embeddings, skip blocks, an unknown field) with one line naming the field
and its value.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vdae.io.errors import CheckpointError
from vdae.models import network
from vdae.models.embedding import sinusoidal

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
ACTIVATIONS = {
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
  "gelu": lambda x: jax.nn.gelu(x, approximate=False),
  "relu": jax.nn.relu,
}

# Fields with exactly one supported value (or None = unset), and what they select.
_FIXED = {
  "time_embedding_type": ("positional",),
  "class_embed_type": (None,),
  "num_class_embeds": (None,),
  "downsample_type": ("conv",),
  "upsample_type": ("conv",),
  "resnet_time_scale_shift": ("default", "scale_shift"),
  "add_attention": (True,),
  "mid_block_type": ("UNetMidBlock2D",),
}
# Fields read below, with diffusers' defaults.
_DEFAULTS = {
  "sample_size": None,
  "in_channels": 3,
  "out_channels": 3,
  "center_input_sample": False,
  "time_embedding_type": "positional",
  "time_embedding_dim": None,
  "freq_shift": 0,
  "flip_sin_to_cos": True,
  "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
  "mid_block_type": "UNetMidBlock2D",
  "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
  "block_out_channels": (224, 448, 672, 896),
  "layers_per_block": 2,
  "mid_block_scale_factor": 1.0,
  "downsample_padding": 1,
  "downsample_type": "conv",
  "upsample_type": "conv",
  "dropout": 0.0,
  "act_fn": "silu",
  "attention_head_dim": 8,
  "norm_num_groups": 32,
  "attn_norm_num_groups": None,
  "norm_eps": 1e-5,
  "resnet_time_scale_shift": "default",
  "add_attention": True,
  "class_embed_type": None,
  "num_class_embeds": None,
  "num_train_timesteps": None,  # only read by the learned embedding, which is refused
}
# Bookkeeping diffusers writes into every config.json.
META = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
_META = META


@dataclasses.dataclass(frozen=True)
class UNetSpec:
  """A validated `UNet2DModel` config (the fields the network is built from)."""

  sample_size: int
  in_channels: int
  out_channels: int
  center_input_sample: bool
  flip_sin_to_cos: bool
  freq_shift: float
  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  block_out_channels: tuple[int, ...]
  layers_per_block: int
  mid_block_scale_factor: float
  downsample_padding: int
  dropout: float
  act_fn: str
  attention_head_dim: int | None
  norm_num_groups: int
  attn_norm_num_groups: int | None
  norm_eps: float
  scale_shift: bool
  time_embedding_dim: int

  @classmethod
  def from_json(cls, cfg: dict[str, Any], where: str) -> UNetSpec:
    """The spec of `cfg` (a parsed config.json); CheckpointError for anything unsupported."""

    def refuse(field: str, value, why: str):
      raise CheckpointError(f"{where}: {field}={value!r} is not supported ({why})")

    name = cfg.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
      refuse("_class_name", name, "vdae imports unconditional UNet2DModel checkpoints")
    for field in cfg:
      if field not in _DEFAULTS and field not in _META:
        refuse(field, cfg[field], "a field vdae does not know; it would be silently ignored")
    c = {**_DEFAULTS, **{k: v for k, v in cfg.items() if k in _DEFAULTS}}
    for field, allowed in _FIXED.items():
      if c[field] not in allowed:
        refuse(field, c[field], f"supported: {', '.join(map(repr, allowed))}")
    down, up = tuple(c["down_block_types"]), tuple(c["up_block_types"])
    for field, types, allowed in (
      ("down_block_types", down, DOWN_BLOCKS),
      ("up_block_types", up, UP_BLOCKS),
    ):
      for i, t in enumerate(types):
        if t not in allowed:
          refuse(f"{field}[{i}]", t, f"supported blocks: {', '.join(allowed)}")
    channels = tuple(int(ch) for ch in c["block_out_channels"])
    if not (len(down) == len(up) == len(channels)):
      refuse("block_out_channels", list(channels), "needs one entry per down and up block")
    if c["act_fn"] not in ACTIVATIONS:
      refuse("act_fn", c["act_fn"], f"supported: {', '.join(ACTIVATIONS)}")
    if c["norm_num_groups"] is None:
      refuse("norm_num_groups", None, "GroupNorm needs a group count")
    size = c["sample_size"]
    if isinstance(size, list | tuple):
      if len(set(size)) != 1:
        refuse("sample_size", size, "only square images")
      size = size[0]
    if size is None or size % 2 ** (len(channels) - 1):
      refuse("sample_size", size, f"must divide by 2^{len(channels) - 1} for the upsampling")
    groups = int(c["norm_num_groups"])
    for ch in channels:
      if ch % groups:
        refuse("norm_num_groups", groups, f"does not divide block_out_channels {list(channels)}")
    return cls(
      sample_size=int(size),
      in_channels=int(c["in_channels"]),
      out_channels=int(c["out_channels"]),
      center_input_sample=bool(c["center_input_sample"]),
      flip_sin_to_cos=bool(c["flip_sin_to_cos"]),
      freq_shift=float(c["freq_shift"]),
      down_block_types=down,
      up_block_types=up,
      block_out_channels=channels,
      layers_per_block=int(c["layers_per_block"]),
      mid_block_scale_factor=float(c["mid_block_scale_factor"]),
      downsample_padding=int(c["downsample_padding"]),
      dropout=float(c["dropout"]),
      act_fn=c["act_fn"],
      attention_head_dim=None if c["attention_head_dim"] is None else int(c["attention_head_dim"]),
      norm_num_groups=groups,
      attn_norm_num_groups=c["attn_norm_num_groups"],
      norm_eps=float(c["norm_eps"]),
      scale_shift=c["resnet_time_scale_shift"] == "scale_shift",
      time_embedding_dim=int(c["time_embedding_dim"] or 4 * channels[0]),
    )


def _conv(i: int, o: int, dtype, rngs, kernel: int = 3, stride: int = 1, pad=((1, 1), (1, 1))):
  return nnx.Conv(i, o, (kernel, kernel), (stride, stride), padding=pad, dtype=dtype, rngs=rngs)


def _norm(channels: int, groups: int, eps: float, dtype, rngs):
  # The two-pass variance: torch's GroupNorm, to the fixtures' 1e-4.
  return nnx.GroupNorm(
    channels, num_groups=groups, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs
  )


class ResnetBlock2D(nnx.Module):
  NAMED = network.ALL

  def __init__(self, spec: UNetSpec, in_ch, out_ch, output_scale=1.0, dtype=jnp.float32, *, rngs):
    s, self.spec, self.output_scale = spec, spec, output_scale
    self.norm1 = _norm(in_ch, s.norm_num_groups, s.norm_eps, dtype, rngs)
    self.conv1 = _conv(in_ch, out_ch, dtype, rngs)
    proj_out = out_ch * (2 if s.scale_shift else 1)
    self.time_emb_proj = nnx.Linear(s.time_embedding_dim, proj_out, dtype=dtype, rngs=rngs)
    self.norm2 = _norm(out_ch, s.norm_num_groups, s.norm_eps, dtype, rngs)
    self.dropout = nnx.Dropout(s.dropout)
    self.conv2 = _conv(out_ch, out_ch, dtype, rngs)
    shortcut = lambda: _conv(in_ch, out_ch, dtype, rngs, kernel=1, pad=((0, 0), (0, 0)))
    self.conv_shortcut = shortcut() if in_ch != out_ch else None

  def __call__(self, x, temb, train: bool, rngs=None):
    s, act = self.spec, ACTIVATIONS[self.spec.act_fn]
    h = self.conv1(act(self.norm1(x)))
    t = self.time_emb_proj(act(temb))[:, None, None, :]
    if not s.scale_shift:
      h = h + t
    h = self.norm2(h)
    if s.scale_shift:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = h * (1 + scale) + shift
    h = self.conv2(self.dropout(act(h), deterministic=not train, rngs=rngs))
    if self.conv_shortcut is not None:
      x = self.conv_shortcut(x)
    return (x + h) / self.output_scale


class Attention(nnx.Module):
  """Single-block self-attention over the H*W positions, with a residual."""

  NAMED = network.ALL

  def __init__(self, spec: UNetSpec, ch: int, dtype, groups=-1, output_scale=1.0, *, rngs):
    self.head_dim = spec.attention_head_dim or ch  # null: one head over all channels
    self.heads, self.output_scale = ch // self.head_dim, output_scale
    groups = spec.norm_num_groups if groups == -1 else groups
    # None: no GroupNorm before the projections
    self.group_norm = None if groups is None else _norm(ch, groups, spec.norm_eps, dtype, rngs)
    inner = self.heads * self.head_dim
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, rngs=rngs)
    self.to_q, self.to_k, self.to_v = linear(ch, inner), linear(ch, inner), linear(ch, inner)
    self.to_out = nnx.List([linear(inner, ch)])

  def __call__(self, x):
    b, hh, ww, c = x.shape
    y = x if self.group_norm is None else self.group_norm(x)
    y = y.reshape(b, hh * ww, c)
    split = lambda a: a.reshape(b, hh * ww, self.heads, self.head_dim)
    q, k, v = split(self.to_q(y)), split(self.to_k(y)), split(self.to_v(y))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # softmax in f32, as diffusers upcasts
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh * ww, self.heads * self.head_dim)
    return (self.to_out[0](o).reshape(b, hh, ww, c) + x) / self.output_scale


class Downsample(nnx.Module):
  NAMED = network.ALL

  def __init__(self, ch: int, pad, dtype, *, rngs):
    self.conv = _conv(ch, ch, dtype, rngs, stride=2, pad=pad)

  def __call__(self, h):
    return self.conv(h)


class Upsample(nnx.Module):
  NAMED = network.ALL

  def __init__(self, ch: int, dtype, *, rngs):
    self.conv = _conv(ch, ch, dtype, rngs)

  def __call__(self, h):
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest, x2
    return self.conv(h)


class DownBlock(nnx.Module):
  NAMED = network.ALL

  def __init__(self, spec, in_ch, out_ch, attn: bool, downsample: bool, dtype, *, rngs):
    n = spec.layers_per_block
    chans = [in_ch] + [out_ch] * n
    self.resnets = nnx.List(
      [ResnetBlock2D(spec, chans[j], out_ch, dtype=dtype, rngs=rngs) for j in range(n)]
    )
    self.attentions = nnx.List(
      [Attention(spec, out_ch, dtype, rngs=rngs) for _ in range(n if attn else 0)]
    )
    self.downsamplers = nnx.List()
    if downsample:
      p = spec.downsample_padding
      # padding 0 pads one zero row/column after the image only (diffusers' Downsample2D).
      pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
      self.downsamplers.append(Downsample(out_ch, pad, dtype, rngs=rngs))

  def __call__(self, h, temb, train, rngs=None):
    outs = []
    for j, resnet in enumerate(self.resnets):
      h = resnet(h, temb, train, rngs)
      if self.attentions:
        h = self.attentions[j](h)
      outs.append(h)
    for down in self.downsamplers:
      h = down(h)
      outs.append(h)
    return h, outs


class UpBlock(nnx.Module):
  NAMED = network.ALL

  def __init__(self, spec, in_ch, out_ch, skip_chs, attn: bool, upsample: bool, dtype, *, rngs):
    self.resnets, self.attentions = nnx.List(), nnx.List()
    for skip_ch in skip_chs:
      self.resnets.append(ResnetBlock2D(spec, in_ch + skip_ch, out_ch, dtype=dtype, rngs=rngs))
      in_ch = out_ch
      if attn:
        self.attentions.append(Attention(spec, out_ch, dtype, rngs=rngs))
    self.upsamplers = nnx.List([Upsample(out_ch, dtype, rngs=rngs)] if upsample else [])

  def __call__(self, h, skips: list, temb, train, rngs=None):
    for j, resnet in enumerate(self.resnets):
      h = resnet(jnp.concatenate([h, skips.pop()], axis=-1), temb, train, rngs)
      if self.attentions:
        h = self.attentions[j](h)
    for up in self.upsamplers:
      h = up(h)
    return h


class MidBlock(nnx.Module):
  NAMED = network.ALL

  def __init__(self, spec: UNetSpec, dtype, *, rngs):
    s, ch = spec, spec.block_out_channels[-1]
    scale = s.mid_block_scale_factor
    # diffusers' mid block: attn_norm_num_groups, else the resnets' groups, except
    # that scale_shift conditioning leaves its attention without a GroupNorm.
    groups = s.attn_norm_num_groups
    if groups is None and not s.scale_shift:
      groups = s.norm_num_groups
    block = lambda: ResnetBlock2D(s, ch, ch, scale, dtype, rngs=rngs)
    self.resnets = nnx.List([block(), block()])
    self.attentions = nnx.List([Attention(s, ch, dtype, groups, scale, rngs=rngs)])

  def __call__(self, h, temb, train, rngs=None):
    h = self.resnets[0](h, temb, train, rngs)
    return self.resnets[1](self.attentions[0](h), temb, train, rngs)


class TimestepEmbedding(nnx.Module):
  NAMED = network.ALL

  def __init__(self, in_dim: int, dim: int, dtype, *, rngs):
    self.linear_1 = nnx.Linear(in_dim, dim, dtype=dtype, rngs=rngs)
    self.linear_2 = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, feats):
    return self.linear_2(nnx.silu(self.linear_1(feats)))


class UNet2DModel(nnx.Module):
  """model(x [B, H, W, C], timesteps [B] on the network's scale) -> [B, H, W, C_out] (f32)."""

  NAMED = network.ALL

  def __init__(self, in_shape=None, *, spec: UNetSpec, dtype=jnp.float32, rngs: nnx.Rngs):
    s, self.spec, self.dtype = spec, spec, dtype
    chans, last = s.block_out_channels, len(s.block_out_channels) - 1
    self.time_embedding = TimestepEmbedding(chans[0], s.time_embedding_dim, dtype, rngs=rngs)
    self.conv_in = _conv(s.in_channels, chans[0], dtype, rngs)
    self.down_blocks, skips, ch = nnx.List(), [chans[0]], chans[0]
    for i, (kind, out) in enumerate(zip(s.down_block_types, chans, strict=True)):
      attn = kind == "AttnDownBlock2D"
      self.down_blocks.append(DownBlock(s, ch, out, attn, i != last, dtype, rngs=rngs))
      skips += [out] * (s.layers_per_block + (i != last))
      ch = out
    self.mid_block = MidBlock(s, dtype, rngs=rngs)
    self.up_blocks = nnx.List()
    for i, (kind, out) in enumerate(zip(s.up_block_types, chans[::-1], strict=True)):
      take = [skips.pop() for _ in range(s.layers_per_block + 1)]
      attn = kind == "AttnUpBlock2D"
      self.up_blocks.append(UpBlock(s, ch, out, take, attn, i != last, dtype, rngs=rngs))
      ch = out
    self.conv_norm_out = _norm(ch, s.norm_num_groups, s.norm_eps, dtype, rngs)
    self.conv_out = _conv(ch, s.out_channels, dtype, rngs)

  def __call__(self, x, timesteps, train: bool = False, *, rngs: nnx.Rngs | None = None):
    s, dt = self.spec, self.dtype
    if s.center_input_sample:
      x = 2 * x - 1.0
    feats = sinusoidal(
      timesteps,
      s.block_out_channels[0],
      1.0,
      flip_sin_to_cos=s.flip_sin_to_cos,
      freq_shift=s.freq_shift,
    )
    temb = self.time_embedding(feats.astype(dt))
    h = self.conv_in(x.astype(dt))
    skips = [h]
    for block in self.down_blocks:
      h, outs = block(h, temb, train, rngs)
      skips += outs
    h = self.mid_block(h, temb, train, rngs)
    for block in self.up_blocks:
      h = block(h, skips, temb, train, rngs)
    assert not skips
    # SiLU whatever act_fn says: diffusers' conv_act is fixed.
    h = nnx.silu(self.conv_norm_out(h))
    return self.conv_out(h).astype(jnp.float32)


def network_of(spec: UNetSpec, dtype=jnp.float32) -> network.Network:
  return network.Network(UNet2DModel, spec=spec, dtype=jnp.dtype(dtype))


def init_abstract(spec: UNetSpec) -> Any:
  """The parameter tree's shapes (no memory): what a checkpoint's tensors must fill."""
  shape = (spec.sample_size, spec.sample_size, spec.in_channels)
  return jax.eval_shape(lambda: network_of(spec).init(jax.random.key(0), shape))


def num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))
