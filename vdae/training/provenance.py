"""What a checkpoint was trained on, recorded in its metadata and checked before it is
resumed or read: a stage trained on another stage's output must meet that output as it
was. Checkpoints written before a record existed carry none and are not checked.

  score pairing    the encoder (stage 2): which score parameters it was trained against
                   (stage 1's EMA parameters at a step, or an imported model's weights
                   hash); also read by every decoder of the VDAE.
  upstream step    the latent prior (stage 2's codes) and the refiner (the VAE's
                   outputs): the step the upstream stage was at.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vdae.io import pretrained
from vdae.io.errors import CheckpointError, ConfigError
from vdae.training import loading

if TYPE_CHECKING:
  from vdae.training.stages import Stage


def score_record(score: type[Stage], config, workdir: str) -> dict:
  """Which score parameters stage 2 trains its encoder against now: the stage-1 EMA
  parameters at stage 1's newest step, or the imported model's source and weights hash."""
  if score.imported(config):
    return {
      "score_params": "imported",
      "score_source": f"diffusers:{os.path.abspath(config.model.path)}",
      "score_sha256": pretrained.weights_sha256(config.model.path),
    }
  return {"score_params": "ema", "score_step": loading.trained_step(score, config, workdir)}


def check_score_pairing(score: type[Stage], recorded: dict, config, workdir: str, doing: str):
  """ConfigError / CheckpointError if the encoder would meet other score parameters than
  those it was trained against (`recorded`; none recorded: EMA assumed)."""
  now = score_record(score, config, workdir)
  was = recorded.get("score_sha256")
  if was is not None or "score_sha256" in now:
    if was != now.get("score_sha256"):
      trained = recorded.get("score_source", "vdae's own stage 1")
      raise CheckpointError(
        f"the encoder was trained against the score model {trained} (weights sha256 "
        f"{str(was)[:12]}), but this run's is {now.get('score_source', 'the stage-1 checkpoint')} "
        f"(sha256 {str(now.get('score_sha256'))[:12]}); {doing} in a new --workdir instead"
      )
    return
  if not config.sampling.use_ema:
    raise ConfigError(
      f"sampling.use_ema=false would {doing} with the raw stage-1 parameters, but the "
      "encoder is trained against the EMA ones; drop the override (it applies only to "
      "--mode=sample from the score model alone)"
    )
  step = recorded.get("score_step")
  if step is not None and step != now["score_step"]:
    raise CheckpointError(
      f"the encoder was trained against stage-1 step {step}, but the stage-1 checkpoint "
      f"in {score.source(config, workdir)} is now at step {now['score_step']}; "
      "retrain the encoder in a new --workdir (point --config.stage2.stage1_workdir at "
      "this one)"
    )


def upstream_record(field: str, upstream: type[Stage], config, workdir: str) -> dict:
  """{field: the step `upstream` is at now}."""
  return {field: loading.trained_step(upstream, config, workdir)}


def check_upstream_step(
  stage: type[Stage],
  recorded: dict,
  field: str,
  upstream: type[Stage],
  trained_on: str,
  config,
  workdir: str,
) -> None:
  """CheckpointError if `stage` was trained on `upstream` at another step than the one
  `upstream` is at now (recorded[field])."""
  step, now = recorded.get(field), loading.trained_step(upstream, config, workdir)
  if step is not None and step != now:
    raise CheckpointError(
      f"the {stage.what} was trained on {trained_on} at step {step}, but {upstream.name} "
      f"is now at step {now}; delete {loading.checkpoint_dir(stage, config, workdir)} and "
      f"run --mode={stage.mode} again"
    )
