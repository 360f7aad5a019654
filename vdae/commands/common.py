"""What the picture commands share: the run's context (stages.Context) and the trained VDAE."""

from __future__ import annotations

from vdae.autoencoders import registry
from vdae.autoencoders.vdae import VDAE
from vdae.training.stages import Context, context


def run(config, workdir: str) -> Context:
  """The run's config, workdir, mesh (from config.mesh) and data splits."""
  return context(config, workdir)


def vdae(ctx: Context) -> VDAE:
  """The trained VDAE (CheckpointError naming the missing stage if there is none)."""
  return registry.load_vdae(ctx.config, ctx.workdir, ctx.mesh, ctx.image_shape)


def encode_split(ctx: Context, limit: int | None = None) -> dict:
  """The split that encode / reconstruct / interpolate read (stage2.encode_split)."""
  return ctx.splits[ctx.config.stage2.encode_split].arrays(limit)
