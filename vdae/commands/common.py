"""What the picture commands share: the run's mesh and data, and the trained VDAE."""

from __future__ import annotations

import dataclasses
from typing import Any

from vdae.autoencoders import registry
from vdae.autoencoders.vdae import VDAE
from vdae.data import sources
from vdae.parallel import sharding


@dataclasses.dataclass
class Run:
  config: Any
  workdir: str
  mesh: Any
  splits: dict[str, sources.Split]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.splits["train"].image_shape)

  def vdae(self) -> VDAE:
    """The trained VDAE (CheckpointError naming the missing stage if there is none)."""
    return registry.load_vdae(self.config, self.workdir, self.mesh, self.image_shape)

  def encode_split(self, limit: int | None = None):
    """The split that encode / reconstruct / interpolate read (stage2.encode_split)."""
    return self.splits[self.config.stage2.encode_split].arrays(limit)


def run(config, workdir: str) -> Run:
  return Run(config, workdir, sharding.make_mesh(config.mesh), sources.load_splits(config.data))
