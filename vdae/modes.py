"""The command-line modes that are not a training loop: sampling, encoding,
reconstruction, interpolation, and the whole pipeline (`all`)."""

from __future__ import annotations

import logging
import os

from vdae import files

log = logging.getLogger(__name__)


def _has_encoder(workdir: str) -> bool:
  return files.isdir(os.path.join(workdir, "stage2", "checkpoints"))


def sample(config, workdir: str):
  """z ~ N(0, I) decoded by the VDAE, or unconditional samples of the score
  model (sampling.source; auto = the VDAE's when stage 2 has a checkpoint)."""
  source = config.sampling.source
  if source == "encoder" or (source == "auto" and _has_encoder(workdir)):
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
  """Stage 1, stage 2, the VAE baseline, then evaluation (pictures and metrics).

  Each step resumes where a previous run stopped, so re-running `all` after an
  interruption finishes the job without redoing what is done.
  """
  from vdae import decode, evaluate, train, train_encoder, vae

  train.pretrain(config, workdir)
  train_encoder.train_encoder(config, workdir)
  vae.train_vae(config, workdir)
  for mode in (decode.reconstruct_mode, decode.sample_mode, decode.interpolate_mode):
    mode(config, workdir)
  return evaluate.evaluate(config, workdir)
