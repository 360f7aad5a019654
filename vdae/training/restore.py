"""Reading a checkpoint for another stage: the checks first, then a sharded restore.

Every reader of a trained stage goes through `restore_params` (via
`stages.load_stage`), so a missing checkpoint, or one trained with another
config or image shape, fails the same clear way before anything is written.
`check_meta` is also what a trainer runs before it resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import optax

from vdae.io import files
from vdae.io.errors import CheckpointError
from vdae.parallel import sharding
from vdae.training import checkpoint, state


def config_json(config) -> dict:
  """The config as plain JSON types (tuples -> lists), as stored in checkpoints."""
  return json.loads(config.to_json_best_effort())


def _lookup(cfg: dict, key: str):
  for part in key.split("."):
    cfg = cfg.get(part, {}) if isinstance(cfg, dict) else {}
  return cfg


def check_meta(meta: dict, config, keys: Sequence[str], image_shape, where: str, hint: str):
  """Raises CheckpointError naming what differs between a checkpoint and this run:
  a whole config group ("model") or one field ("vae.decoder_channels"), or the
  image shape."""
  mine = config_json(config)
  for key in keys:
    theirs, ours = _lookup(meta["config"], key), _lookup(mine, key)
    if theirs != ours:
      if isinstance(theirs, dict) and isinstance(ours, dict):
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        fields = ", ".join(f"{key}.{d}" for d in diff)
      else:
        fields = key
      raise CheckpointError(
        f"{where} was trained with a different `{key.split('.')[0]}` config (differs in: "
        f"{fields}). {hint}"
      )
  if image_shape is not None and tuple(meta["image_shape"]) != tuple(image_shape):
    raise CheckpointError(
      f"{where} was trained on images of shape {meta['image_shape']}, but the data has "
      f"{list(image_shape)}. {hint}"
    )


def restore_params(
  ckpt_dir: str,
  init_params: Callable[[jax.Array], Any],
  opt: optax.GradientTransformation,
  config,
  mesh,
  *,
  keys: Sequence[str],
  image_shape,
  what: str,
  run_first: str,
  use_ema: bool = True,
  step: int | None = None,
) -> tuple[Any, dict]:
  """(params, meta) of the newest checkpoint in `ckpt_dir` (or of `step`), laid out on `mesh`.

  init_params / opt: the stage's, so the abstract target is the saved state's
  exact structure. keys: config keys that must match the checkpoint's.
  what / run_first name the checkpoint and the mode that makes it.
  """
  if not files.isdir(ckpt_dir):
    raise CheckpointError(f"no {what} checkpoint at {ckpt_dir}. {run_first}")
  ckpt = checkpoint.Checkpointer(ckpt_dir, keep=1000, async_save=False, create=False)
  try:
    if ckpt.latest_step() is None:
      raise CheckpointError(f"no {what} checkpoint in {ckpt_dir}. {run_first}")
    if step is not None and step not in ckpt.steps():
      raise CheckpointError(
        f"no {what} checkpoint of step {step} in {ckpt_dir} (it has {ckpt.steps()}). "
        "Pick one of those."
      )
    meta = ckpt.read_meta(step)
    check_meta(
      meta,
      config,
      keys,
      image_shape,
      f"the {what} checkpoint in {ckpt_dir}",
      "Use the config it was trained with.",
    )
    abstract = state.abstract_state(init_params, opt)
    shardings = sharding.state_shardings(abstract, mesh, config.mesh.param_rules)
    _, restored = ckpt.restore(checkpoint.abstract_like(abstract, shardings), step=step)
  finally:
    ckpt.close()
  return (restored.ema_params if use_ema else restored.params), meta
