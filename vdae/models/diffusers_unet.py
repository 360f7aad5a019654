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

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdae.io.errors import CheckpointError
from vdae.models.embedding import sinusoidal

DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
ACTIVATIONS = {
  "silu": nn.silu,
  "swish": nn.silu,
  "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
  "gelu": lambda x: nn.gelu(x, approximate=False),
  "relu": nn.relu,
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


def _conv(ch: int, name: str, dtype, kernel: int = 3, stride: int = 1, pad=((1, 1), (1, 1))):
  return nn.Conv(ch, (kernel, kernel), (stride, stride), padding=pad, name=name, dtype=dtype)


def _norm(groups: int, eps: float, name: str, dtype):
  # The two-pass variance: torch's GroupNorm, to the fixtures' 1e-4.
  return nn.GroupNorm(groups, epsilon=eps, use_fast_variance=False, name=name, dtype=dtype)


class ResnetBlock2D(nn.Module):
  spec: UNetSpec
  out_ch: int
  output_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, temb, train: bool):
    s, act = self.spec, ACTIVATIONS[self.spec.act_fn]
    h = _conv(self.out_ch, "conv1", self.dtype)(
      act(_norm(s.norm_num_groups, s.norm_eps, "norm1", self.dtype)(x))
    )
    proj = nn.Dense(
      self.out_ch * (2 if s.scale_shift else 1), name="time_emb_proj", dtype=self.dtype
    )
    t = proj(act(temb))[:, None, None, :]
    if not s.scale_shift:
      h = h + t
    h = _norm(s.norm_num_groups, s.norm_eps, "norm2", self.dtype)(h)
    if s.scale_shift:
      scale, shift = jnp.split(t, 2, axis=-1)
      h = h * (1 + scale) + shift
    h = nn.Dropout(s.dropout, deterministic=not train)(act(h))
    h = _conv(self.out_ch, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_ch:
      x = _conv(self.out_ch, "conv_shortcut", self.dtype, kernel=1, pad=((0, 0), (0, 0)))(x)
    return (x + h) / self.output_scale


class Attention(nn.Module):
  """Single-block self-attention over the H*W positions, with a residual."""

  heads: int
  head_dim: int
  groups: int | None  # None: no GroupNorm before the projections
  eps: float
  output_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, hh, ww, c = x.shape
    y = x if self.groups is None else _norm(self.groups, self.eps, "group_norm", self.dtype)(x)
    y = y.reshape(b, hh * ww, c)
    inner = self.heads * self.head_dim
    split = lambda a: a.reshape(b, hh * ww, self.heads, self.head_dim)
    q, k, v = (
      split(nn.Dense(inner, name=n, dtype=self.dtype)(y)) for n in ("to_q", "to_k", "to_v")
    )
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(self.head_dim)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # softmax in f32, as diffusers upcasts
    o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh * ww, inner)
    o = nn.Dense(c, name="to_out_0", dtype=self.dtype)(o).reshape(b, hh, ww, c)
    return (o + x) / self.output_scale


def _attention(spec: UNetSpec, ch: int, name: str, dtype, groups=-1, output_scale=1.0):
  head_dim = spec.attention_head_dim or ch  # null: one head over all channels
  return Attention(
    ch // head_dim,
    head_dim,
    spec.norm_num_groups if groups == -1 else groups,
    spec.norm_eps,
    output_scale,
    dtype,
    name=name,
  )


class DownBlock(nn.Module):
  spec: UNetSpec
  out_ch: int
  attn: bool
  downsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, temb, train):
    outs = []
    for j in range(self.spec.layers_per_block):
      h = ResnetBlock2D(self.spec, self.out_ch, dtype=self.dtype, name=f"resnets_{j}")(
        h, temb, train
      )
      if self.attn:
        h = _attention(self.spec, self.out_ch, f"attentions_{j}", self.dtype)(h)
      outs.append(h)
    if self.downsample:
      p = self.spec.downsample_padding
      # padding 0 pads one zero row/column after the image only (diffusers' Downsample2D).
      pad = ((0, 1), (0, 1)) if p == 0 else ((p, p), (p, p))
      h = Downsample(self.out_ch, pad, self.dtype, name="downsamplers_0")(h)
      outs.append(h)
    return h, outs


class Downsample(nn.Module):
  ch: int
  pad: tuple
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    return _conv(self.ch, "conv", self.dtype, stride=2, pad=self.pad)(h)


class Upsample(nn.Module):
  ch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest, x2
    return _conv(self.ch, "conv", self.dtype)(h)


class UpBlock(nn.Module):
  spec: UNetSpec
  out_ch: int
  attn: bool
  upsample: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, skips: list, temb, train):
    for j in range(self.spec.layers_per_block + 1):
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = ResnetBlock2D(self.spec, self.out_ch, dtype=self.dtype, name=f"resnets_{j}")(
        h, temb, train
      )
      if self.attn:
        h = _attention(self.spec, self.out_ch, f"attentions_{j}", self.dtype)(h)
    if self.upsample:
      h = Upsample(self.out_ch, self.dtype, name="upsamplers_0")(h)
    return h


class MidBlock(nn.Module):
  spec: UNetSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, temb, train):
    s, ch = self.spec, self.spec.block_out_channels[-1]
    scale = s.mid_block_scale_factor
    h = ResnetBlock2D(s, ch, scale, self.dtype, name="resnets_0")(h, temb, train)
    # diffusers' mid block: attn_norm_num_groups, else the resnets' groups, except
    # that scale_shift conditioning leaves its attention without a GroupNorm.
    groups = s.attn_norm_num_groups
    if groups is None and not s.scale_shift:
      groups = s.norm_num_groups
    h = _attention(s, ch, "attentions_0", self.dtype, groups, scale)(h)
    return ResnetBlock2D(s, ch, scale, self.dtype, name="resnets_1")(h, temb, train)


class TimestepEmbedding(nn.Module):
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats):
    h = nn.Dense(self.dim, name="linear_1", dtype=self.dtype)(feats)
    return nn.Dense(self.dim, name="linear_2", dtype=self.dtype)(nn.silu(h))


class UNet2DModel(nn.Module):
  """model(x [B, H, W, C], timesteps [B] on the network's scale) -> [B, H, W, C_out] (f32)."""

  spec: UNetSpec
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, timesteps, train: bool = False):
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
    temb = TimestepEmbedding(s.time_embedding_dim, dt, name="time_embedding")(feats.astype(dt))
    h = _conv(s.block_out_channels[0], "conv_in", dt)(x.astype(dt))
    skips = [h]
    last = len(s.block_out_channels) - 1
    for i, (kind, ch) in enumerate(zip(s.down_block_types, s.block_out_channels, strict=True)):
      block = DownBlock(s, ch, kind == "AttnDownBlock2D", i != last, dt, name=f"down_blocks_{i}")
      h, outs = block(h, temb, train)
      skips += outs
    h = MidBlock(s, dt, name="mid_block")(h, temb, train)
    rev = s.block_out_channels[::-1]
    for i, kind in enumerate(s.up_block_types):
      block = UpBlock(s, rev[i], kind == "AttnUpBlock2D", i != last, dt, name=f"up_blocks_{i}")
      h = block(h, skips, temb, train)
    assert not skips
    # SiLU whatever act_fn says: diffusers' conv_act is fixed.
    h = nn.silu(_norm(s.norm_num_groups, s.norm_eps, "conv_norm_out", dt)(h))
    return _conv(s.out_channels, "conv_out", dt)(h).astype(jnp.float32)


def init_abstract(spec: UNetSpec) -> Any:
  """The parameter tree's shapes (no memory): what a checkpoint's tensors must fill."""
  model = UNet2DModel(spec)
  x = jnp.zeros((1, spec.sample_size, spec.sample_size, spec.in_channels))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)))["params"])


def num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))
