"""What every stage is: the `Stage` base class its subclasses declare themselves with, and
the run `Context` a stage is built on (training/stages/__init__.py has the table)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from vdae.data import sources
from vdae.training import loading, provenance
from vdae.types import Key, Params


@dataclasses.dataclass
class Context:
  """What a stage is built from: the run's config, workdir, mesh and data."""

  config: Any
  workdir: str
  mesh: Any
  splits: dict[str, sources.Split]

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.splits["train"].image_shape)

  def recon_batch(self, n: int = 16) -> np.ndarray:
    """The first n test images: the fixed batch of the reconstruction grids."""
    return self.splits["test"].arrays(n)["image"]


class Stage:
  """A trained stage. Subclasses set the class attributes, `init`, and build the run's
  parts in `__init__` (calling this one first)."""

  name: ClassVar[str]  # directory, TensorBoard run and config group
  mode: ClassVar[str]  # the --mode that trains it
  what: ClassVar[str]  # how messages name its checkpoint ("no stage-1 checkpoint")
  title: ClassVar[str]  # its loss-curve panel's
  compare_keys: ClassVar[tuple[str, ...]]  # config keys that must match to resume or load
  source_key: ClassVar[str | None] = None  # "group.field": a workdir readers look in instead
  # What its checkpoints record of the stage it was trained on: (meta field, that stage,
  # how messages name what it trained on); checked on resume and on load.
  upstream: ClassVar[tuple[str, type[Stage], str] | None] = None

  # --- the declaration: a config and a workdir are enough -----------------------------
  @classmethod
  def init(cls, config, image_shape) -> Callable[[Key], Params]:
    """init_params(key) -> params."""
    raise NotImplementedError

  @classmethod
  def check_shape(cls, config, image_shape) -> None:
    """DataError if its networks cannot take images of this shape."""

  @classmethod
  def source(cls, config, workdir: str) -> str:
    """The workdir that holds its checkpoints for readers."""
    if cls.source_key:
      group, field = cls.source_key.split(".")
      return config[group][field] or workdir
    return workdir

  @classmethod
  def imported(cls, config) -> bool:
    """True when its parameters are imported, not trained here."""
    return False

  @classmethod
  def check_upstream(cls, recorded: dict, config, workdir: str) -> None:
    """CheckpointError if the stage it was trained on has moved on since."""
    if cls.upstream:
      field, up, trained_on = cls.upstream
      provenance.check_upstream_step(cls, recorded, field, up, trained_on, config, workdir)

  # --- the run's parts ----------------------------------------------------------------
  loss_fn: Callable  # (params, batch, key, frozen) -> (loss, aux)

  def __init__(self, ctx: Context):
    self.ctx, self.config = ctx, ctx.config
    self.group = ctx.config[self.name]  # its sizes: schema.STAGE_FIELDS
    self.init_params = self.init(ctx.config, ctx.image_shape)
    self.frozen: Any = None  # earlier stages' parameters: a step argument, never optimised
    self.meta: dict = {}  # recorded in every checkpoint

  def check_resume(self) -> None:
    """check_upstream on its own newest checkpoint, when it has one to resume."""
    me, c, wd = type(self), self.config, self.ctx.workdir
    if loading.is_trained(me, c, wd):
      self.check_upstream(loading.read_meta(me, c, wd), c, wd)

  def record_upstream(self) -> None:
    """Records the step the stage it is trained on is at now (checked by check_upstream)."""
    field, up, _ = self.upstream
    self.meta.update(provenance.upstream_record(field, up, self.config, self.ctx.workdir))

  def images(self, state, step: int) -> dict[str, np.ndarray]:
    """{tag: [N, H, W, C] in [-1, 1]} for TensorBoard."""
    del state, step
    return {}
