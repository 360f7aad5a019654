"""The command-line modes that are not a training loop: sampling, encoding,
reconstruction, interpolation, and the whole pipeline (`all`)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _has_encoder(workdir: str) -> bool:
  return os.path.isdir(os.path.join(workdir, "stage2", "checkpoints"))


def sample(config, workdir: str):
  """With an encoder: z ~ N(0, I), decoded; without: unconditional samples."""
  if _has_encoder(workdir):
    from vdae import decode

    return decode.sample_mode(config, workdir)
  from vdae import train

  path = train.sample_mode(config, workdir)
  log.info("samples written to %s", path)
  return path


def encode(config, workdir: str):
  from vdae import decode

  return decode.encode_mode(config, workdir)


def reconstruct(config, workdir: str):
  from vdae import decode

  return decode.reconstruct_mode(config, workdir)


def interpolate(config, workdir: str):
  from vdae import decode

  return decode.interpolate_mode(config, workdir)


def run_all(config, workdir: str):
  """Stage 1, stage 2, then evaluation, each resuming where a previous run stopped."""
  import importlib

  from vdae import train

  train.pretrain(config, workdir)
  steps = [
    ("vdae.train_encoder", "train_encoder"),
    ("vdae.decode", "reconstruct_mode"),
    ("vdae.evaluate", "evaluate"),
  ]
  for module, fn in steps:
    try:
      mod = importlib.import_module(module)
    except ModuleNotFoundError:
      log.warning("%s is not available in this build; stopping after it", module)
      return
    getattr(mod, fn)(config, workdir)
