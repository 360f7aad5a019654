"""--mode=encode: WORKDIR/encode/latents.npz with mu, log_var, index (row in the source), labels.

With sampling.invert=true also x_T: each image's own x_1 under the conditional PF ODE
at its code mu (sampling.invert_method), from which decoding mu reconstructs it.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from vdae.commands import common
from vdae.data import pipeline
from vdae.io import files

log = logging.getLogger(__name__)


def encode(config, workdir: str) -> str:
  r = common.run(config, workdir)
  ae = common.vdae(r)
  split = r.splits[config.stage2.encode_split]
  parts = {"mu": [], "log_var": [], "index": [], "labels": [], "x_T": []}
  for b in pipeline.eval_batches(split, config.stage2.batch_size):
    mu, lv = ae.posterior(b["image"])
    v = b["valid"]
    for k, a in (("mu", mu), ("log_var", lv), ("index", b["index"]), ("labels", b["label"])):
      parts[k].append(a[v])
    if config.sampling.invert:
      parts["x_T"].append(ae.invert(b["image"], mu)[v])
  out = {k: np.concatenate(a) if a else np.zeros(0) for k, a in parts.items()}
  if not split.has_labels:
    out.pop("labels")
  if not config.sampling.invert:
    out.pop("x_T")
  path = os.path.join(workdir, "encode", "latents.npz")
  if jax.process_index() == 0:
    files.write_npz(path, **out)
  log.info("encoded %d %s images -> %s", len(out["mu"]), split.name, path)
  return path
