"""Reading a checkpoint for another stage: the checks first, then a sharded restore.

Every reader of a trained stage goes through `restore_params` (via
`stages.load_stage`), so a missing checkpoint, or one trained with another
config or image shape, fails the same clear way before anything is written.
`check_meta` is also what a trainer runs before it resumes.

A reader restores only the parameters it asked for (the optimizer's moments and the
other copy of the parameters are not read), and inside `reuse_loaded()` (every command
runs in one) a checkpoint already restored is not read again: evaluation and the
pictures load the same stages several times.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
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
    field = "ema_params" if use_ema else "params"
    layout = (mesh, repr(config.mesh.param_rules), field)
    key = _loaded_key(ckpt.directory, ckpt.latest_step() if step is None else step, layout)
    if _loaded is not None and key in _loaded:
      _loaded.move_to_end(key)
      return _loaded[key], meta
    abstract = state.abstract_state(init_params, opt)
    shardings = sharding.state_shardings(abstract, mesh, config.mesh.param_rules)
    target = getattr(checkpoint.abstract_like(abstract, shardings), field)
    # Only `field` is read: a quarter of the state's bytes with Adam's two moments.
    got, params = ckpt.restore(target, step=step, part=field)
  finally:
    ckpt.close()
  if _loaded is not None:
    _loaded[_loaded_key(ckpt.directory, got, layout)] = params
    while len(_loaded) > _LOADED_MAX:
      _loaded.popitem(last=False)
  return params, meta


# Parameters restored in the current `reuse_loaded()` scope, newest last.
_loaded: collections.OrderedDict | None = None
_LOADED_MAX = 8


def _loaded_key(directory: str, step, layout) -> tuple:
  """A restored checkpoint's identity: its step directory (Checkpointer.directory is
  absolute), with, on a local disk in a one-process run, the directory's inode and
  mtime (a step written again is read again), and its layout. With several processes
  the key must not depend on what one host's stat says: a hit on one and a miss on
  another would leave the restore's collectives waiting."""
  step_dir = os.path.join(directory, str(step))
  stamp = None
  if not files.is_remote(step_dir) and jax.process_count() == 1:
    try:
      st = os.stat(step_dir)
      stamp = (st.st_ino, st.st_mtime_ns)
    except OSError:
      pass
  return (step_dir, stamp, layout)


@contextlib.contextmanager
def reuse_loaded() -> Iterator[None]:
  """Within it, `restore_params` returns the parameters it already restored from the
  same checkpoint step and layout instead of reading them again (at most
  `_LOADED_MAX` sets held; all released on exit). Safe because nothing
  donates or deletes restored parameters, and a committed step never changes."""
  global _loaded
  outer, _loaded = _loaded, (_loaded if _loaded is not None else collections.OrderedDict())
  try:
    yield
  finally:
    _loaded = outer
