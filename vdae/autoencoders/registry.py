"""The autoencoders the harness compares, and how each is loaded from a workdir.

One entry per autoencoder: the stage whose checkpoint says it is trained,
and a loader that restores it (through `stages.load_stage`) as an
`Autoencoder`. The harness evaluates every entry whose stage is trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from vdae.autoencoders.base import Autoencoder
from vdae.autoencoders.refined_vae import RefinedVAE
from vdae.autoencoders.sdedit_vae import SDEditVAE
from vdae.autoencoders.vae import VAE
from vdae.autoencoders.vdae import VDAE
from vdae.data.sources import data_levels
from vdae.training.stages import Refiner, check_pairing, load_prior, load_stage


def load_vdae(config, workdir: str, mesh, image_shape) -> VDAE:
  """The encoder with the score parameters it was trained against (else an error),
  and the latent prior sampling.latent_prior asks for."""
  enc_params, meta = load_stage("stage2", config, workdir, mesh, image_shape)
  check_pairing(meta, config, workdir, "decode")
  score_params, _ = load_stage("stage1", config, workdir, mesh, image_shape, use_ema=True)
  prior = load_prior(config, workdir, mesh, image_shape)
  return VDAE(config, score_params, enc_params, mesh, image_shape, prior)


def load_vae(config, workdir: str, mesh, image_shape) -> VAE:
  params, _ = load_stage("vae", config, workdir, mesh, image_shape)
  return VAE(config, params, image_shape, data_levels(config.data, config.eval))


def load_refined_vae(config, workdir: str, mesh, image_shape) -> RefinedVAE:
  """The refiner with the VAE at the step it was trained on (else an error), or,
  trained jointly, with the VAE its own checkpoint holds."""
  params, meta = load_stage("refiner", config, workdir, mesh, image_shape)
  if config.refiner.joint:
    vae = VAE(config, params["vae"], image_shape, data_levels(config.data, config.eval))
    return RefinedVAE(config, vae, params["refiner"], mesh, image_shape)
  Refiner.check_upstream(meta, config, workdir)
  return RefinedVAE(config, load_vae(config, workdir, mesh, image_shape), params, mesh, image_shape)


def load_sdedit_vae(config, workdir: str, mesh, image_shape) -> SDEditVAE:
  """The VAE with the score model (stage 1's EMA parameters, or the imported ones)."""
  score_params, _ = load_stage("stage1", config, workdir, mesh, image_shape, use_ema=True)
  vae = load_vae(config, workdir, mesh, image_shape)
  return SDEditVAE(config, vae, score_params, mesh, image_shape)


@dataclasses.dataclass(frozen=True)
class Entry:
  stage: str  # the stage that trains it (the sweep trains this one)
  load: Callable[..., Autoencoder]  # (config, workdir, mesh, image_shape) -> Autoencoder
  needs: tuple[str, ...] = ()  # other stages it reads: evaluated when all are trained
  also_reads: tuple[str, ...] = ()  # stages it reads where they are trained (else without)

  @property
  def reads(self) -> tuple[str, ...]:
    """Every stage whose checkpoint can change what it computes."""
    return (self.stage, *self.needs, *self.also_reads)


# Evaluation order; the comparison grid's rows follow it (originals, then each): the
# VAE, the VAE with each diffusion enhancement, then the VDAE, which has no decoder.
AUTOENCODERS: dict[str, Entry] = {
  "vae": Entry("vae", load_vae),
  "sdedit_vae": Entry("vae", load_sdedit_vae, needs=("stage1",)),
  "refined_vae": Entry("refiner", load_refined_vae, also_reads=("vae",)),
  "vdae": Entry("stage2", load_vdae, also_reads=("stage1", "prior")),
}
