"""Where a stage's checkpoints are and how its readers load them.

Every function takes a stage's declaration (a `stages.Stage` subclass: its name, mode,
what messages call it, compare keys, init, source and imported hooks), so every reader
gets the same checks and messages; `stages` offers them by stage name.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from etils import epath

from vdae.io import files, pretrained
from vdae.training import checkpoint, restore
from vdae.training import state as state_lib
from vdae.types import Params

if TYPE_CHECKING:
  from vdae.training.stages import Stage


def checkpoint_dir(stage: type[Stage], config, workdir: str) -> str:
  return os.path.join(stage.source(config, workdir), stage.name, "checkpoints")


def trained_step(stage: type[Stage], config, workdir: str) -> int:
  """The newest checkpointed step (0 if it has none)."""
  names = files.listdir(checkpoint_dir(stage, config, workdir))
  return max((int(s) for s in names if s.isdigit()), default=0)


def read_meta(stage: type[Stage], config, workdir: str) -> dict:
  """The metadata recorded with the newest checkpoint."""
  ckpt = checkpoint.Checkpointer(
    checkpoint_dir(stage, config, workdir), keep=1000, async_save=False, create=False
  )
  try:
    return ckpt.read_meta()
  finally:
    ckpt.close()


def fingerprint(stage: type[Stage], config, workdir: str) -> str:
  """What identifies the parameters a reader of `stage` gets now: the newest step and a
  hash of the metadata recorded with it (its config, versions, provenance), or the
  imported weights' hash; "untrained" without a checkpoint. Evaluation keys its kept
  parts by it (vdae/evaluation/parts.py)."""
  if stage.imported(config):
    return f"imported:{pretrained.weights_sha256(config.model.path)}"
  step = trained_step(stage, config, workdir)
  if not step:
    return "untrained"
  meta = os.path.join(checkpoint_dir(stage, config, workdir), str(step), "meta", "metadata")
  data = epath.Path(meta).read_bytes() if files.exists(meta) else b""
  return f"{step}:{hashlib.sha256(data).hexdigest()[:16]}"


def is_trained(stage: type[Stage], config, workdir: str) -> bool:
  """Whether it has a checkpoint where its readers look for it (an imported stage always
  has: its directory is checked when it is loaded)."""
  return stage.imported(config) or trained_step(stage, config, workdir) > 0


def load(
  stage: type[Stage], config, workdir: str, mesh, image_shape, use_ema: bool = True, step=None
) -> tuple[Params, dict]:
  """(params, meta) of the newest checkpoint (or of `step`), sharded on `mesh`.

  Raises CheckpointError if it is missing or was trained with another config (the
  stage's compare_keys) or image shape.
  """
  if stage.imported(config):
    return pretrained.load_params(config.model.path, mesh, config.mesh.param_rules, image_shape)
  g = config[stage.name]
  opt, _ = state_lib.make_optimizer(g.lr, g.warmup_steps, g.num_steps, config.optim)
  hint = f"Run --mode={stage.mode} first"
  if stage.source_key:
    hint += f", or point --config.{stage.source_key} at a workdir that has one"
  return restore.restore_params(
    checkpoint_dir(stage, config, workdir),
    stage.init(config, tuple(image_shape)),
    opt,
    config,
    mesh,
    keys=stage.compare_keys,
    image_shape=image_shape,
    what=stage.what,
    run_first=hint + ".",
    use_ema=use_ema,
    step=step,
  )
