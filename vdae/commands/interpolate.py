"""--mode=interpolate: linear (upper rows) and spherical (lower rows) paths between test codes,
decoded by the probability-flow ODE from one shared x_1 so only z changes along a row."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from vdae.commands import common
from vdae.diffusion import sde as sde_lib
from vdae.io import writer

log = logging.getLogger(__name__)


def slerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Spherical interpolation between codes a, b [L] at weights w [K] -> [K, L]."""
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  cos = np.clip(np.dot(a / na, b / nb), -1.0, 1.0)
  omega = np.arccos(cos)
  if omega < 1e-6:
    return (1 - w)[:, None] * a + w[:, None] * b
  return (np.sin((1 - w) * omega)[:, None] * a + np.sin(w * omega)[:, None] * b) / np.sin(omega)


def interpolate(config, workdir: str, pairs: int = 4, steps: int = 8) -> str:
  r = common.run(config, workdir)
  ae = common.vdae(r)
  x = common.encode_split(r, 2 * pairs)["image"]
  mu = ae.encode(x)
  w = np.linspace(0.0, 1.0, steps)
  lin = [(1 - w)[:, None] * mu[2 * i] + w[:, None] * mu[2 * i + 1] for i in range(pairs)]
  sph = [slerp(mu[2 * i], mu[2 * i + 1], w) for i in range(pairs)]
  z = np.concatenate(lin + sph).astype(np.float32)
  x1 = np.asarray(jax.random.normal(jax.random.key(config.seed), (1, *r.image_shape)))
  x1 = np.repeat(x1 * sde_lib.from_config(config.sde).prior_std, len(z), axis=0)
  imgs = ae.decode(z, jax.random.key(config.seed), method="ode", x_init=x1)
  path = writer.write_images(
    os.path.join(workdir, "interpolate"), "interpolations", imgs, cols=steps, z=z, endpoints=x
  )
  log.info("interpolations written to %s", path)
  return path
