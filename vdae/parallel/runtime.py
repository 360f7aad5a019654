"""Process runtime: multi-host initialisation.

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
import jaxlib.version

log = logging.getLogger(__name__)

_YNN_FLAG = "xla_cpu_experimental_ynn_fusion_type"


def cpu_kernels(ynnpack: bool) -> None:
  """Which kernels XLA:CPU runs dots and convolutions with (runtime.cpu_ynnpack).

  jaxlib >= 0.10 hands them to YNNPACK fusions by default. On vdae's U-Nets (3x3
  convolutions over 8x8 and 4x4 maps, 16-64 channels) XLA's own kernels train 1.2-1.8x
  faster (docs/performance.md, "CPU kernels"), so unless asked for, the fusions are turned off. XLA
  reads XLA_FLAGS once, when the first backend starts: call this before anything runs
  on a device (later, it only reaches child processes). XLA_FLAGS naming the flag
  itself wins. jaxlib before 0.10 is left alone: an XLA flag it does not know aborts
  the process. GPU and TPU compiles do not read xla_cpu_* flags."""
  flags = os.environ.get("XLA_FLAGS", "")
  if ynnpack or _YNN_FLAG in flags:
    return
  if jaxlib.version.__version_info__ < (0, 10):
    return
  os.environ["XLA_FLAGS"] = f"{flags} --{_YNN_FLAG}=".strip()
  log.info("XLA:CPU dots and convolutions: XLA's kernels (runtime.cpu_ynnpack=false)")


def default_cpu_kernels() -> None:
  """cpu_kernels with the product's default (runtime.cpu_ynnpack in configs/base.py), for
  what runs steps outside the command runner: the benchmarks and the tests.
  VDAE_CPU_YNNPACK=1 keeps YNNPACK's fusions."""
  from configs import base  # lazy, as in vdae.schema: configs/ imports vdae

  cpu_kernels(os.environ.get("VDAE_CPU_YNNPACK") == "1" or base.get_config().runtime.cpu_ynnpack)


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
