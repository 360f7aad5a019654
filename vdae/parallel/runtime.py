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


def compile_cache(runtime_cfg) -> str | None:
  """Turns on JAX's persistent compilation cache (runtime.compile_cache); its directory.

  Must run before the first compile. A rerun of any mode then loads every program
  an earlier run compiled (keyed by the program and the devices), so only new
  shapes or configs pay XLA's compile time."""
  choice = runtime_cfg.compile_cache
  if choice == "none":
    return None
  if choice == "auto":
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vdae", "jax"
    )
  else:
    path = choice
  jax.config.update("jax_compilation_cache_dir", path)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # tests set their own
    jax.config.update(
      "jax_persistent_cache_min_compile_time_secs", float(runtime_cfg.compile_cache_min_seconds)
    )
  log.info("persistent compilation cache: %s", path)
  return path
