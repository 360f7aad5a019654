"""Preemption notices: SIGTERM becomes "save at the next step boundary, then exit 143"."""

from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)


class Preemption:
  """Turns SIGTERM into "save at the next step boundary, then exit".

  Single process: a SIGTERM handler sets a flag; it is installed for the
  training loop only (`close` puts the previous one back), so a SIGTERM
  outside a loop still ends the process at once.

  Several processes: JAX's preemption service (started by
  jax.distributed.initialize, enabled by default) catches SIGTERM on any
  process and `reached_preemption_sync_point` makes every process agree on the
  same step, so all of them join the same save. Its counter is the training
  step: Orbax's CheckpointManager.save calls the same function with the step,
  so any other counter would be overwritten. The service computes "the
  largest step any process last reported, plus one"; a process that has not
  reported yet makes the agreement fail, so the loop reports its start step
  before compiling. A notice that lands between two stages run by one process
  is honoured by the scheduler's later hard kill only (the previous stage's
  checkpoints are complete by then).
  """

  def __init__(self):
    self._flag = threading.Event()
    self._multi = jax.process_count() > 1
    self._prev = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._prev = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: saving a checkpoint at the next step boundary, then exiting")
    self._flag.set()

  def reached(self, step: int) -> bool:
    """True on every process at the same step once any process got SIGTERM."""
    if self._multi:
      from jax.experimental import multihost_utils

      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service disabled
        return False
    return self._flag.is_set()

  def close(self) -> None:
    """Puts the previous SIGTERM handler back (single process)."""
    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)
      self._prev = None
