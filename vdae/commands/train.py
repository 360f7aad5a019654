"""--mode=pretrain / train_encoder / train_prior / train_vae / train_refiner: one stage of the
table, trained."""

from __future__ import annotations

from vdae.training import stages


def pretrain(config, workdir: str):
  return stages.train("stage1", config, workdir)


def train_encoder(config, workdir: str):
  return stages.train("stage2", config, workdir)


def train_prior(config, workdir: str):
  return stages.train("prior", config, workdir)


def train_vae(config, workdir: str):
  return stages.train("vae", config, workdir)


def train_refiner(config, workdir: str):
  return stages.train("refiner", config, workdir)
