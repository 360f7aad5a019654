"""Preemption notices: SIGTERM becomes "save at the next safe point, then exit 143".

Single process: `notices()` (entered by the command runner for the whole
command) turns SIGTERM into a flag. Training loops check it at every step
boundary (`Preemption.reached`: save, then exit 143); everything else checks
it at its safe points (`exit_if_requested`: between stages, between the
pictures, between evaluation batches), where there is no state to save and no
file half-written, and exits 143. Running the same command again continues.

Several processes: JAX's preemption service (started by
jax.distributed.initialize, enabled by default) catches SIGTERM on any
process and `reached_preemption_sync_point` makes every process agree on the
same step, so all of them join the same save. Its counter is the training
step: Orbax's CheckpointManager.save calls the same function with the step,
so any other counter would be overwritten. The service computes "the largest
step any process last reported, plus one"; a process that has not reported
yet makes the agreement fail, so the loop reports its start step before
compiling. Outside a training loop there is no step to agree on: a notice
that lands there is honoured at the next stage's first step, or by the
scheduler's later hard kill (every checkpoint and file is complete by then).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)

_notice = threading.Event()
_handler_installed = False


def _on_sigterm(signum, frame):
  del signum, frame
  log.warning("SIGTERM received: stopping at the next safe point (saving if training)")
  _notice.set()


def _can_handle() -> bool:
  return jax.process_count() == 1 and threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def notices():
  """SIGTERM sets the notice instead of ending the process, for the block (single process)."""
  global _handler_installed
  if not _can_handle() or _handler_installed:
    yield
    return
  prev = signal.signal(signal.SIGTERM, _on_sigterm)
  _handler_installed = True
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, prev)
    _handler_installed = False
    _notice.clear()


def requested() -> bool:
  """Whether a SIGTERM arrived (single process)."""
  return _notice.is_set()


def exit_if_requested(where: str) -> None:
  """At a safe point with nothing to save: exit 143 if a SIGTERM arrived."""
  if _notice.is_set():
    log.warning("preempted %s; everything written so far is complete. Rerun to continue.", where)
    raise SystemExit(143)


class Preemption:
  """A training loop's view of the notice: `reached(step)` is True on every
  process at the same step once any process got SIGTERM.

  A loop run outside `notices()` (a library caller) installs the handler for
  its own duration; `close` puts the previous one back.
  """

  def __init__(self):
    self._multi = jax.process_count() > 1
    self._own = None
    if not self._multi and _can_handle() and not _handler_installed:
      self._own = notices()
      self._own.__enter__()

  def reached(self, step: int) -> bool:
    if self._multi:
      from jax.experimental import multihost_utils

      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service disabled
        return False
    return _notice.is_set()

  def close(self) -> None:
    if self._own is not None:
      self._own.__exit__(None, None, None)
      self._own = None
