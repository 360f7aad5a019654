"""--mode=sample: prior codes decoded by the VDAE, or unconditional score-model samples.

The VDAE's codes come from the learned latent prior when it is trained
(sampling.latent_prior=auto), else z ~ N(0, I).

sampling.source picks which: "encoder", "score", or "auto" (the VDAE's once
stage 2 has a checkpoint). Writes WORKDIR/samples/samples.png and .npz.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from vdae.commands import common
from vdae.io import writer
from vdae.training import stages

log = logging.getLogger(__name__)


def source(config, workdir: str) -> str:
  """ "encoder" or "score": what sampling.source means for this workdir."""
  src = config.sampling.source
  if src == "auto":
    return "encoder" if stages.is_trained("stage2", config, workdir) else "score"
  return src


def vdae_samples(config, workdir: str) -> str:
  r = common.run(config, workdir)
  ae = common.vdae(r)  # with the prior sampling.latent_prior picks
  z = ae.prior_sample(config.sampling.num_samples, jax.random.key(config.seed))
  x = ae.decode(z, jax.random.key(config.seed + 1))
  return writer.write_images(os.path.join(workdir, "samples"), "samples", x, z=z)


def score_samples(config, workdir: str) -> str:
  r = common.run(config, workdir)
  params, _ = stages.load_stage(
    "stage1", config, workdir, r.mesh, r.image_shape, use_ema=config.sampling.use_ema
  )
  fn = stages.make_sample_fn(config, (config.sampling.num_samples, *r.image_shape), r.mesh)
  x = np.asarray(jax.device_get(fn(params, jax.random.key(config.seed))))
  return writer.write_images(os.path.join(workdir, "samples"), "samples", x)


def sample(config, workdir: str) -> str:
  fn = vdae_samples if source(config, workdir) == "encoder" else score_samples
  path = fn(config, workdir)
  log.info("samples written to %s", path)
  return path
