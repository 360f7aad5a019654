"""Forces 4 CPU devices before JAX loads, so sharding tests run anywhere."""

import os
import sys
import tempfile

# The suite is compile-bound (tiny networks, a few steps each): XLA:CPU's backend
# optimisations cost more compile time than they save in run time here. Subprocesses
# inherit these flags (tests/support/procs.py adds them to every child's XLA_FLAGS).
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests compile the same tiny-config steps (and subprocesses inherit the
# env): a persistent compilation cache for the session turns repeats into hits.
# Under pytest-xdist every worker of one run shares it (its run id names it).
_run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
if _run:
  _cache = os.path.join(tempfile.gettempdir(), f"vdae_jax_cache_{_run}")
  os.makedirs(_cache, exist_ok=True)
else:
  _cache = tempfile.mkdtemp(prefix="vdae_jax_cache_")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _cache)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The CPU kernels the product runs (runtime.cpu_ynnpack's default), set before any
# backend starts: in-process tests then compute what the commands compute, and
# subprocesses inherit it. VDAE_CPU_YNNPACK=1 runs the suite on YNNPACK's fusions.
from vdae.parallel import runtime as _runtime  # noqa: E402

_runtime.default_cpu_kernels()

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiny_config():
  from configs import tiny

  return tiny.get_config()
