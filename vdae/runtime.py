"""Process runtime: multi-host initialisation and preemption notices.

Multi-process when the config (runtime.*) or the environment says so:
  - runtime.coordinator_address / num_processes / process_id set explicitly
    (local multi-process tests, GPU clusters);
  - VDAE_COORDINATOR / VDAE_NUM_PROCESSES / VDAE_PROCESS_ID env variables;
  - on a TPU VM pod slice, jax.distributed.initialize() with no arguments
    detects everything itself (launch/ sets VDAE_AUTO_DISTRIBUTED=1).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax

log = logging.getLogger(__name__)


def initialize(runtime_cfg) -> None:
  """Starts JAX's distributed runtime when the run spans several processes."""
  addr = runtime_cfg.coordinator_address or os.environ.get("VDAE_COORDINATOR", "")
  nproc = runtime_cfg.num_processes or int(os.environ.get("VDAE_NUM_PROCESSES", "0"))
  pid = runtime_cfg.process_id
  if pid < 0:
    pid = int(os.environ.get("VDAE_PROCESS_ID", "-1"))
  if addr and nproc > 1:
    # Cross-process collectives on the CPU backend (localhost tests). Set it
    # unconditionally: asking jax.default_backend() first would initialise the
    # backends, after which jax.distributed.initialize refuses to run. gloo is
    # already the default in jax 0.10, so on TPU/GPU this changes nothing.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    local_ids = runtime_cfg.local_device_ids or os.environ.get("VDAE_LOCAL_DEVICE_IDS", "")
    jax.distributed.initialize(
      coordinator_address=addr,
      num_processes=nproc,
      process_id=pid,
      local_device_ids=[int(i) for i in local_ids.split(",")] if local_ids else None,
      initialization_timeout=120,
    )
  elif os.environ.get("VDAE_AUTO_DISTRIBUTED") == "1":
    jax.distributed.initialize()
  if jax.process_count() > 1:
    log.info(
      "process %d of %d, %d local / %d global devices",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
    )


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
