"""Forces 4 CPU devices before JAX loads, so sharding tests run anywhere, with XLA:CPU's
backend optimisations off (tests/support/procs.py: tiny configs are compile-bound), and
one BLAS thread per process."""

import os
import sys
import tempfile

# One BLAS thread per process, set before numpy loads OpenBLAS (children inherit it):
# README's command runs 2 workers on 2 cores, so a second BLAS thread only waits for a core
# the other worker holds. OpenBLAS's threads spin while they wait: the FID interval's
# coverage test took 11.0 s beside a busy core with its default threads against 4.0 s with
# one (3.99 s alone either way), and 29 s in the suite.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.support.procs import FAST_COMPILE  # noqa: E402 (imports no JAX)

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


@pytest.fixture
def mini_config(tiny_config):
  """The tiny config with procs.MINI's networks and constant schedule, for tests of a
  loop's or a stage's wiring: cheaper to compile, and programs shared across run lengths."""
  from tests.support import procs

  return procs.mini(tiny_config)


# pytest-xdist's --dist loadfile hands files to workers in the order it queues them, the next
# to a worker with two tests or fewer left, so a long file queued last runs alone at the end.
# Longest first (worker seconds, measured: BUILD.md "Test") keeps both workers busy to the
# end; files not named keep their order after these. pytest-xdist (3.8) would queue files by
# their number of tests instead (--loadscope-reorder, its default): pytest_configure turns
# that off.
LONGEST_FIRST = (
  "tests/integration/pipeline_faults_test.py",
  "tests/integration/multihost_test.py",
  "tests/integration/evaluate_test.py",
  "tests/integration/imported_test.py",
  "tests/integration/faults_test.py",
  "tests/integration/accelerator_check_test.py",
  "tests/unit/evaluation_test.py",
  "tests/unit/refined_vae_test.py",
  "tests/integration/train_test.py",
  "tests/integration/bad_input_test.py",
  "tests/unit/models_test.py",
  "tests/unit/samplers_test.py",
)


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
  rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
  where = lambda item: os.path.relpath(str(item.path), ROOT)
  items.sort(key=lambda item: rank.get(where(item), len(rank)))  # stable: order within kept
