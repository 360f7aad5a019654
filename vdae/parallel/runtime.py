"""Process runtime: multi-host initialisation (owned here).

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
