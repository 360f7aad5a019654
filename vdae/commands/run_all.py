"""--mode=all: every stage in the stage table, the pictures, then the evaluation.

Each step resumes where a previous run stopped, so re-running `all` after an
interruption finishes the job without redoing what is done.
"""

from __future__ import annotations

from vdae.commands import evaluate, interpolate, reconstruct, sample
from vdae.training import stages


def run_all(config, workdir: str):
  for name in stages.STAGES:
    stages.train(name, config, workdir)
  reconstruct.reconstruct(config, workdir)
  sample.vdae_samples(config, workdir)
  interpolate.interpolate(config, workdir)
  return evaluate.evaluate(config, workdir)
