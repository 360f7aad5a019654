"""Orbax checkpointing: train state + Grain iterator state + run metadata.

One `CheckpointManager` per stage directory (`WORKDIR/<stage>/checkpoints`).
Saves are async by default; a step directory appears only once complete (Orbax
writes into a temporary directory and renames it), so a killed process leaves
nothing that restore trips over. Restores go into an abstract *sharded* target,
so a run can resume on a different device count. A damaged newest checkpoint
is skipped with a warning for the one before it.
"""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import sys
import types
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.metadata import array_metadata_store

from vdae.io import files
from vdae.io.errors import CheckpointError

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


def _raised_in_orbax(exc: BaseException | None) -> bool:
  """Whether `exc`, or an exception it was raised from, came out of Orbax."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    tb = exc.__traceback__
    while tb is not None:
      if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
        return True
      tb = tb.tb_next
    exc = exc.__cause__ or exc.__context__
  return False


# When Orbax gives up on a damaged checkpoint, it abandons the sibling reads
# still in flight on its asyncio loop, and closes the loop. Their fallout is
# printed by the interpreter and by asyncio as one traceback each, hundreds per
# damaged step, burying the one clear message `Checkpointer.restore` gives:
#   - completion callbacks that hit the closed loop ("Event loop is closed"),
#   - read coroutines collected unfinished (Orbax re-raises their GeneratorExit),
#   - futures whose exceptions nobody retrieved (logged by asyncio).
# Only these are dropped; every other unraisable exception or asyncio error
# still prints, and only while a restore runs (`_QuietAbandonedReads`).
def _drop_abandoned_reads(previous):
  def hook(unraisable):
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
      return
    if isinstance(obj, types.CoroutineType) and _raised_in_orbax(exc):
      return
    previous(unraisable)

  return hook


class _DropAbandonedReads(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    if "exception was never retrieved" not in record.getMessage():
      return True
    exc = record.exc_info[1] if record.exc_info else None
    # A Task's record also names its coroutine, hence Orbax, in the message.
    return not (_raised_in_orbax(exc) or "orbax" in record.getMessage())


class _QuietAbandonedReads:
  """While `Checkpointer.restore` tries its candidates: drops the abandoned-read fallout
  described above, and nothing else, then puts the interpreter's hook and asyncio's
  logger back as they were. After a candidate failed, the abandoned reads are collected
  before the filters come off, so their fallout meets them."""

  def __enter__(self):
    self.failed = False
    self._hook, self._filter = sys.unraisablehook, _DropAbandonedReads()
    sys.unraisablehook = _drop_abandoned_reads(self._hook)
    logging.getLogger("asyncio").addFilter(self._filter)
    return self

  def __exit__(self, *exc):
    try:
      if self.failed:
        gc.collect()
    finally:
      sys.unraisablehook = self._hook
      logging.getLogger("asyncio").removeFilter(self._filter)


# Orbax writes a replicated array "replica-parallel": each device holding a copy writes a
# slice of it, one sliced program per array per device. Worth it for large arrays; for
# biases and norms it is pure overhead (a warm MINI --mode=all made 288 slice programs and
# took 34.8 s; 29.3 s without them). Below this size per slice, one replica writes it whole.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's pytree handler (what StandardSave uses: the same files) with Orbax's default
  type handlers, except that replica-parallel writes start at MIN_REPLICA_SLICE_BYTES.
  Orbax's global registry is left as it is."""
  th = ocp.type_handlers
  arrays = th.ArrayHandler(
    array_metadata_store=array_metadata_store.Store(),
    min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES,
  )
  handlers = [
    (t, arrays if t is jax.Array else th.get_type_handler(t)) for t in th.supported_types()
  ]
  return ocp.PyTreeCheckpointHandler(
    save_concurrent_gb=96,  # StandardCheckpointHandler's, as before
    restore_concurrent_gb=96,
    type_handler_registry=th.create_type_handler_registry(*handlers),
  )


def _array_paths(tree: Any) -> set[str]:
  """'params/Dense_0/kernel'-style paths of a tree's leaves, alike for a live state (struct
  fields, optax's named tuples) and for Orbax's metadata of it (nested dicts)."""
  name = lambda k: str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
  return {"/".join(map(name, p)) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
    handlers = {
      "state": _state_handler(),
      "meta": ocp.JsonCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
    }
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    # Orbax removes those leftovers on a thread of its own and waits for it only before a
    # save. A run that restores and then stops on an error (another model's checkpoint)
    # exits while that thread still schedules file checks, and the interpreter's shutdown
    # prints its "cannot schedule new futures" traceback under vdae's one-line error. A
    # listing of one directory: wait for it here, before anything reads the directory.
    self._mngr._maybe_await_cleanup_tmp_directory()

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
      return files.read_json(path)
    except (OSError, ValueError) as e:
      raise CheckpointError(
        f"checkpoint {self.directory}/{step}: unreadable metadata ({e})."
      ) from e

  # --- save / restore ----------------------------------------------------------
  def save(self, step: int, state: Any, data_iter: Any | None, meta: dict, force=False) -> bool:
    items = {"state": ocp.args.PyTreeSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self._mngr.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(
    self,
    abstract_state: Any,
    data_iter: Any | None = None,
    step: int | None = None,
    part: str | None = None,
  ) -> tuple[int, Any]:
    """Restores the newest readable checkpoint (or `step`) into the sharded target.

    part: restore only this field of the state (`abstract_state` is then that field's
    target, and so is what comes back); the rest is not read from disk.

    A newest checkpoint that fails to restore (or whose metadata does not
    read) is skipped, with a warning, for the one before it, and moved aside to
    `<directory>.damaged/<step>` so the run can write that step again (Orbax
    refuses to overwrite a step) and its bytes stay there to inspect. If none
    restores, a CheckpointError says so and nothing is moved.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}.")
    if jax.process_count() > 1:
      candidates = self._agreed(candidates, data_iter is not None)
    errors = []
    target = abstract_state if part is None else {part: abstract_state}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    state_args = ocp.args.PyTreeRestore(target, restore_args, partial_restore=part is not None)
    with _QuietAbandonedReads() as quiet:
      for s in candidates:
        items = {"state": state_args}
        if data_iter is not None:
          items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        try:
          self._read_meta(s)
          out = self._mngr.restore(s, args=ocp.args.Composite(**items))
          if errors:
            log.warning("restored step %d after skipping damaged newer step(s): %s", s, errors)
            self._move_aside([c for c in candidates if c > s])
          return s, (out["state"] if part is None else out["state"][part])
        except Exception as e:  # noqa: BLE001 - any failure means "damaged"; try older
          quiet.failed = True
          log.warning(
            "checkpoint %s/%d could not be restored (%s); trying the one before",
            self.directory,
            s,
            str(e).splitlines()[0][:300],
          )
          errors.append(f"step {s}: {type(e).__name__}")
    newest = candidates[0]
    differs = self._tree_difference(newest, target)
    if differs:
      raise CheckpointError(
        f"{self.directory}/{newest} holds other networks than this config and this vdae "
        f"build ({differs}). Read it with the config and vdae version that wrote it (its "
        "meta records both), or move the directory aside to start afresh."
      )
    raise CheckpointError(
      f"none of the checkpoints in {self.directory} could be restored ({'; '.join(errors)}). "
      "Move the directory aside to start afresh."
    )

  def _tree_difference(self, step: int, target: Any) -> str | None:
    """What `step`'s saved state lacks of `target`'s arrays, when it lacks any: a
    checkpoint of other networks, not a damaged one. None when it has them all or its
    metadata does not read (then it is damage, said as such)."""
    reader = ocp.StandardCheckpointer()
    try:
      saved = reader.metadata(os.path.join(self.directory, str(step), "state")).item_metadata
      have = _array_paths(saved.tree)
    except Exception:  # noqa: BLE001 - unreadable metadata is damage, not a format
      return None
    finally:
      reader.close()
    missing = sorted(_array_paths(target) - have)
    if not missing:
      return None
    extra = sorted(have - _array_paths(target))
    said = f"{len(missing)} of the arrays it needs are not in it, e.g. {missing[0]}"
    return said + (f"; it has {len(extra)} it does not need, e.g. {extra[0]}" if extra else "")

  def _readable(self, step: int, with_data: bool) -> bool:
    """Whether this process can read what it alone reads of `step`: the metadata and
    its own data-iterator position (the arrays are read through the restore)."""
    try:
      self._read_meta(step)
      if with_data:
        i, n = jax.process_index(), jax.process_count()
        files.read_json(os.path.join(self.directory, str(step), "data", f"process_{i}-of-{n}.json"))
      return True
    except (OSError, ValueError, CheckpointError) as e:
      log.warning("checkpoint %s/%d is not readable here (%s)", self.directory, step, e)
      return False

  def _agreed(self, candidates: list[int], with_data: bool) -> list[int]:
    """Several processes: the candidates from the newest step that EVERY process can
    read. Each checks its own part, then they agree (an all-gather), so no two
    processes restore different steps; newer steps are moved aside as damaged.

    Orbax's restore ends in a barrier, so a restore that fails on one process only
    cannot fall back to an older step safely: the check comes first.
    """
    from jax.experimental import multihost_utils

    mine = np.array([self._readable(s, with_data) for s in candidates], np.int32)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, len(candidates))
    ok = every.min(axis=0).astype(bool)
    if not ok.any():
      raise CheckpointError(
        f"no checkpoint in {self.directory} is readable by every process "
        f"(readable per process: {every.tolist()} for steps {candidates}). Move the "
        "directory aside to start afresh."
      )
    first = int(np.argmax(ok))
    if first:
      log.warning(
        "step %d is the newest checkpoint every process can read; skipping %s",
        candidates[first],
        candidates[:first],
      )
      self._move_aside(candidates[:first])
    return candidates[first:]

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
