"""Orbax checkpointing: train state + Grain iterator state + run metadata.

One `CheckpointManager` per stage directory (`WORKDIR/<stage>/checkpoints`).
Saves are async by default; a step directory appears only once complete (Orbax
writes into a temporary directory and renames it), so a killed process leaves
nothing that restore trips over. Restores go into an abstract *sharded* target,
so a run can resume on a different device count. A damaged newest checkpoint
is skipped with a warning for the one before it.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from vdae.errors import CheckpointError

log = logging.getLogger(__name__)

_VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml-collections")


def package_versions() -> dict[str, str]:
  out = {}
  for name in _VERSIONED:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "missing"
  return out


def abstract_like(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings (restore target)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def _drop_closed_loop_callbacks(previous):
  """An unraisable-exception hook that drops one known, harmless kind.

  When Orbax gives up on a damaged checkpoint it closes its asyncio loop while
  TensorStore still holds reads; their completion callbacks then hit the closed
  loop and surface as "unraisable" RuntimeErrors from TensorStore's threads,
  one traceback each (hundreds per damaged step). `Checkpointer.restore`
  reports the damage itself; every other unraisable exception still prints.
  """

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    previous(unraisable)

  return hook


sys.unraisablehook = _drop_closed_loop_callbacks(sys.unraisablehook)


class _DropOrphanedReads(logging.Filter):
  """The same give-up leaves Orbax's sibling array reads as asyncio tasks whose
  exceptions nobody retrieves; asyncio logs each with a traceback when it is
  collected. Only those Orbax reads are dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.getMessage()
    return not ("exception was never retrieved" in msg and "orbax" in msg)


logging.getLogger("asyncio").addFilter(_DropOrphanedReads())


class Checkpointer:
  """Saves and restores {state, data iterator, meta} for one training stage."""

  def __init__(self, directory: str, *, keep: int, async_save: bool, create=True):
    directory = os.fspath(directory)
    # Orbax requires absolute paths; users type relative ones (runs/digits).
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=create,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,  # leftovers of a killed save
    )
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  # --- queries -------------------------------------------------------------------
  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def read_meta(self, step: int | None = None) -> dict:
    """The run metadata of `step`, or of the newest checkpoint whose metadata reads."""
    if step is not None:
      return self._read_meta(step)
    steps = list(reversed(self.steps()))
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    for s in steps[:-1]:
      try:
        return self._read_meta(s)
      except CheckpointError as e:  # restore() skips that checkpoint as damaged too
        log.warning("%s", e)
    return self._read_meta(steps[-1])

  def _read_meta(self, step: int) -> dict:
    path = os.path.join(self.directory, str(step), "meta", "metadata")
    try:
      with epath.Path(path).open() as f:  # epath: gs:// workdirs too
        return json.load(f)
    except (OSError, ValueError) as e:
      raise CheckpointError(
        f"checkpoint {self.directory}/{step}: unreadable metadata ({e})."
      ) from e

  # --- save / restore ----------------------------------------------------------
  def save(self, step: int, state: Any, data_iter: Any | None, meta: dict, force=False) -> bool:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(
    self, abstract_state: Any, data_iter: Any | None = None, step: int | None = None
  ) -> tuple[int, Any]:
    """Restores the newest readable checkpoint (or `step`) into the sharded target.

    A newest checkpoint that fails to restore (or whose metadata does not
    read) is skipped, with a warning, for the one before it, and moved aside to
    `<directory>.damaged/<step>` so the run can write that step again (Orbax
    refuses to overwrite a step) and its bytes stay there to inspect. If none
    restores, a CheckpointError says so and nothing is moved.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    errors = []
    for s in candidates:
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iter is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
      try:
        self._read_meta(s)
        out = self._mngr.restore(s, args=ocp.args.Composite(**items))
        if errors:
          log.warning("restored step %d after skipping damaged newer checkpoint(s): %s", s, errors)
          self._move_aside([c for c in candidates if c > s])
        return s, out["state"]
      except Exception as e:  # noqa: BLE001 - any failure means "damaged"; try older
        log.warning(
          "checkpoint %s/%d could not be restored (%s); trying the one before",
          self.directory,
          s,
          str(e).splitlines()[0][:300],
        )
        errors.append(f"step {s}: {type(e).__name__}")
    raise CheckpointError(
      f"none of the checkpoints in {self.directory} could be restored ({'; '.join(errors)}). "
      "Move the directory aside to start afresh."
    )

  def _move_aside(self, steps: list[int]) -> None:
    """Renames damaged step directories out of the manager's sight (process 0
    renames, every process waits for it, then re-lists the steps)."""
    aside = epath.Path(self.directory.rstrip("/") + ".damaged")
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      for s in steps:
        dst, n = aside / str(s), 1
        while dst.exists():
          dst, n = aside / f"{s}.{n}", n + 1
        (epath.Path(self.directory) / str(s)).rename(dst)
        log.warning("moved damaged checkpoint %s/%d to %s", self.directory, s, dst)
    ocp.multihost.sync_global_processes("vdae_checkpoint_move_aside")
    self._mngr.reload()

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
