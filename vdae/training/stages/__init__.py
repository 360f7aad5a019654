"""The trained stages, each declared once as a `Stage` subclass in its own module
(score_model, encoder, prior, vae, refiner; the base class in base.py), and the table of
them.

A stage's class attributes name its directory (WORKDIR/<name>/, also its TensorBoard run
and its config group, whose fields are schema.STAGE_FIELDS), the --mode that trains it
and the config keys that must match to resume or to load it; its classmethods are what
a reader needs with only a config and a workdir (`init`, `check_shape`, `source`,
`imported`). Constructed on a run's `Context`, it builds that run's parts: `loss_fn`,
`frozen` (earlier stages' parameters), `meta` (recorded in every checkpoint) and
`images`; `loop.Trainer` runs it with the sizes of its config group.

From the table, by stage name: trainer / train (--mode=pretrain, train_encoder,
train_prior, train_vae, train_refiner); load_stage, is_trained, trained_step, fingerprint,
checkpoint_dir, read_meta (training/loading.py: every reader gets the same checks and
messages); score_pairing / check_pairing (training/provenance.py).

A stage can also be imported instead of trained (`Stage.imported`): the score model
with model.source=diffusers comes from a pretrained DDPM directory
(vdae/io/pretrained.py). It then counts as trained, `train` has nothing to do, and
`load_stage` reads the directory; every reader is unchanged.
"""

from __future__ import annotations

import logging

from vdae.data import sources
from vdae.parallel import sharding
from vdae.training import loading
from vdae.training.loop import Trainer
from vdae.training.stages.base import Context, Stage
from vdae.training.stages.encoder import Encoder, make_encoder_loss
from vdae.training.stages.prior import (
  POSTERIOR_TABLE_MAX_BYTES,
  Prior,
  load_prior,
  split_posteriors,
)
from vdae.training.stages.refiner import Refiner
from vdae.training.stages.score_model import (
  ScoreModel,
  check_pairing,
  make_sample_fn,
  score_pairing,
)
from vdae.training.stages.vae import VAE
from vdae.types import Params

__all__ = [
  "POSTERIOR_TABLE_MAX_BYTES",
  "STAGES",
  "VAE",
  "Context",
  "Encoder",
  "Prior",
  "Refiner",
  "ScoreModel",
  "Stage",
  "check_pairing",
  "load_prior",
  "make_encoder_loss",
  "make_sample_fn",
  "score_pairing",
  "split_posteriors",
]

log = logging.getLogger(__name__)

STAGES: dict[str, type[Stage]] = {s.name: s for s in (ScoreModel, Encoder, Prior, VAE, Refiner)}


# --- by stage name ------------------------------------------------------------------
def context(config, workdir: str, mesh=None, splits=None) -> Context:
  mesh = sharding.make_mesh(config.mesh) if mesh is None else mesh
  splits = sources.load_splits(config.data) if splits is None else splits
  return Context(config, workdir, mesh, splits)


def check_shapes(names, config, image_shape) -> None:
  """DataError, before anything is written, if a stage in `names` cannot take the images."""
  for name in names:
    STAGES[name].check_shape(config, tuple(image_shape))


def trainer(name: str, config, workdir: str, mesh=None, splits=None) -> Trainer:
  ctx = context(config, workdir, mesh, splits)
  check_shapes([name], config, ctx.image_shape)
  return Trainer(STAGES[name](ctx))


def train(name: str, config, workdir: str, mesh=None, splits=None):
  """Trains stage `name` to its num_steps (resuming); returns the final state
  (None for an imported stage: nothing to train)."""
  if STAGES[name].imported(config):
    log.info("%s: imported from %s, nothing to train", name, config.model.path)
    return None
  return trainer(name, config, workdir, mesh, splits).train()


def checkpoint_dir(name: str, config, workdir: str) -> str:
  return loading.checkpoint_dir(STAGES[name], config, workdir)


def trained_step(name: str, config, workdir: str) -> int:
  return loading.trained_step(STAGES[name], config, workdir)


def read_meta(name: str, config, workdir: str) -> dict:
  return loading.read_meta(STAGES[name], config, workdir)


def fingerprint(name: str, config, workdir: str) -> str:
  return loading.fingerprint(STAGES[name], config, workdir)


def is_trained(name: str, config, workdir: str) -> bool:
  return loading.is_trained(STAGES[name], config, workdir)


def load_stage(
  name: str, config, workdir: str, mesh, image_shape, use_ema: bool = True, step=None
) -> tuple[Params, dict]:
  return loading.load(STAGES[name], config, workdir, mesh, image_shape, use_ema, step)
