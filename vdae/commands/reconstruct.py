"""--mode=reconstruct: originals (odd rows) above their VDAE reconstructions (even rows).

Decoded from fresh noise, or with sampling.invert=true from each image's own x_1
(the conditional PF ODE run forwards; near-exact reconstructions).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from vdae.commands import common
from vdae.io import writer

log = logging.getLogger(__name__)


def reconstruct(config, workdir: str, n: int = 32) -> str:
  r = common.run(config, workdir)
  ae = common.vdae(r)
  x = common.encode_split(r, n)["image"]
  mu = ae.encode(x)
  if config.sampling.invert:
    rec = ae.reconstruct_inverted(x, mu)
  else:
    rec = ae.decode(mu, jax.random.key(config.seed))
  cols = 8
  rows = []
  for i in range(0, len(x), cols):
    rows += [x[i : i + cols], rec[i : i + cols]]
  path = writer.write_images(
    os.path.join(workdir, "reconstruct"),
    "reconstructions",
    np.concatenate(rows),
    cols=cols,
    originals=x,
    reconstructions=rec,
    mu=mu,
  )
  log.info("reconstructions written to %s", path)
  return path
