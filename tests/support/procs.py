"""Subprocess plumbing for the multi-process, fault and bad-input tests.

Every child runs in its own session (so a kill reaches all of it) with a hard
timeout, and is killed if the test fails. Runs share one persistent XLA
compilation cache: the same program (same config, same device layout) is
compiled once per cache, not once per restart; results are bit-identical
either way, the cache only saves time.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "support", "multihost_driver.py")
LAUNCH = os.path.join(ROOT, "launch")


def _jaxlib_version() -> tuple[int, ...]:
  try:
    v = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return ()
  return tuple(int(p) for p in re.findall(r"\d+", v)[:3])


# Tests run tiny configs: compile-bound, so XLA:CPU's backend optimisations cost more than
# they save (a tiny --mode=all: 136 s against 173 s with them), and its older elemental
# fusion emitters compile faster than the MLIR ones at these sizes (a cold MINI --mode=all:
# XLA compile 24.7 s against 40.6 s, 61.5 s against 77.7 s in all; warm, 40.6 s against
# 41.7 s). jaxlib 0.12's XLA has only the MLIR emitters and aborts on the flag, so it is
# passed to the jaxlibs known to take it (0.10). tests/conftest.py sets these for the
# pytest processes too; children inherit them.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if (0, 10) <= _jaxlib_version() < (0, 11):
  FAST_COMPILE += " --xla_cpu_use_fusion_emitters=false"

# configs/tiny.py made cheaper to compile (one resolution, one block, no attention) and
# with a constant schedule, so num_steps is not baked into the step and runs of different
# lengths share compiled programs: for tests of wiring, not of an architecture.
MINI_FIELDS = {
  "model.num_res_blocks": 1,
  "model.attn_resolutions": (),
  "model.channel_mults": (1,),
  "encoder.channel_mults": (1,),
  "encoder.num_res_blocks": 1,
  "optim.schedule": "constant",
}
MINI = ("--config=configs/tiny.py", *(f"--config.{k}={v}" for k, v in MINI_FIELDS.items()))


def set_fields(config, fields: dict):
  """`config` (in this process) with {"group.field": value} set."""
  for key, value in fields.items():
    group, field = key.split(".")
    config[group][field] = value
  return config


def mini(config):
  """`config` (in this process) with MINI's fields."""
  return set_fields(config, MINI_FIELDS)


def compile_cache(request, tmp_path_factory) -> str:
  """The cache directory: pytest's cache dir (kept between sessions) if enabled,
  else the session's (tests/conftest.py), else a new one."""
  cache = getattr(request.config, "cache", None)
  if cache is not None:
    return str(cache.mkdir("vdae_xla_compile_cache"))
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("xla"))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(cache_dir: str, devices: int = 4, **extra: str) -> dict[str, str]:
  """Environment of a child: CPU only, `devices` forced devices, the shared cache, XLA's
  backend optimisations off."""
  env = dict(os.environ)
  for k in ("VDAE_COORDINATOR", "VDAE_NUM_PROCESSES", "VDAE_PROCESS_ID"):
    env.pop(k, None)
  env.update(
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}",
    JAX_COMPILATION_CACHE_DIR=cache_dir,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    PYTHON=sys.executable,
    PYTHONPATH=ROOT,
    PYTHONUNBUFFERED="1",
    **extra,
  )
  return env


class Proc:
  """A child process in its own session, output to a log file."""

  def __init__(self, argv: Sequence[str], env: dict[str, str], log: str):
    self.log = log
    os.makedirs(os.path.dirname(log), exist_ok=True)
    self._f = open(log, "wb")  # noqa: SIM115 - closed in wait()/kill()
    self.p = subprocess.Popen(
      list(argv),
      cwd=ROOT,
      env=env,
      stdout=self._f,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    self.t0 = time.monotonic()

  @property
  def pid(self) -> int:
    return self.p.pid

  def output(self) -> str:
    with open(self.log, errors="replace") as f:
      return f.read()

  def running(self) -> bool:
    return self.p.poll() is None

  def signal(self, sig: int) -> None:
    """Sends `sig` to the child itself (not its session)."""
    if self.running():
      os.kill(self.p.pid, sig)

  def kill(self) -> None:
    """SIGKILL to the child's whole session."""
    if self.running():
      try:
        os.killpg(self.p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    self.p.wait(timeout=30)
    self._f.close()

  def wait(self, timeout: float) -> int:
    """Exit status; on timeout the child is killed and the test fails."""
    try:
      rc = self.p.wait(timeout=timeout)
    except subprocess.TimeoutExpired as e:
      self.kill()
      raise AssertionError(f"timed out after {timeout}s:\n{self.output()[-4000:]}") from e
    self._f.close()
    return rc


def sigterm_when(p: Proc, cond, timeout: float, what: str, grace: float = 240) -> tuple[int, str]:
  """SIGTERM to `p` once cond() holds, then its exit status (within `grace` s) and output;
  `p` is killed whatever happens."""
  try:
    wait_for(cond, timeout, what, [p])
    p.signal(signal.SIGTERM)
    rc = p.wait(timeout=grace)
  finally:
    p.kill()
  return rc, p.output()


def run(argv: Sequence[str], env: dict[str, str], log: str, timeout: float) -> tuple[int, str]:
  """Runs a child to the end: (exit status, output)."""
  p = Proc(argv, env, log)
  try:
    rc = p.wait(timeout)
  finally:
    p.kill()
  return rc, p.output()


def driver(*flags: str) -> list[str]:
  return [sys.executable, "-u", DRIVER, *MINI, *flags]


def wait_for(cond, timeout: float, what: str, procs: Sequence[Proc] = ()) -> None:
  """Polls `cond()` until true; fails (naming `what`) on timeout or if a proc exits."""
  t_end = time.monotonic() + timeout
  while not cond():
    for p in procs:
      if not p.running():
        raise AssertionError(f"exited ({p.p.returncode}) before {what}:\n{p.output()[-4000:]}")
    if time.monotonic() > t_end:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


# --- reading what a run wrote ------------------------------------------------------
def steps(ckpt_dir: str) -> list[int]:
  """Committed step directories (Orbax writes tmp dirs and renames them)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def read_state(ckpt_dir: str, step: int | None = None) -> dict:
  """A checkpoint's train state as numpy, whatever process count wrote it."""
  import jax
  import orbax.checkpoint as ocp

  step = steps(ckpt_dir)[-1] if step is None else step
  path = os.path.join(ckpt_dir, str(step), "state")
  ckptr = ocp.StandardCheckpointer()
  tree = ckptr.metadata(path).item_metadata.tree
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
  return ckptr.restore(path, target)


def read_scalars(tb_dir: str, tag: str) -> dict[int, float]:
  """{step: value} of one scalar from every event file under tb_dir."""
  from tensorboard.backend.event_processing import event_accumulator

  out = {}
  for f in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    acc = event_accumulator.EventAccumulator(f, size_guidance={"scalars": 0})
    acc.Reload()
    if tag in acc.Tags()["scalars"]:
      out.update({e.step: e.value for e in acc.Scalars(tag)})
  return out


def assert_trees_close(a, b, rtol: float = 1e-5, atol: float = 1e-6, what: str = "") -> None:
  import jax

  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in la] == [p for p, _ in lb], f"{what}: different tree structure"
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_allclose(
      np.asarray(x),
      np.asarray(y),
      rtol=rtol,
      atol=atol,
      err_msg=f"{what}{jax.tree_util.keystr(path)}",
    )


def snapshot(root: str) -> dict[str, str]:
  """{relative path: sha256} of every file under root."""
  out = {}
  for dp, _, fs in os.walk(root):
    for f in fs:
      p = os.path.join(dp, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out
