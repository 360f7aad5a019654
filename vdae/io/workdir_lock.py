"""One run per workdir: a lock file taken before anything is written.

WORKDIR/.vdae.lock holds the holder's host, pid, start time, a heartbeat (rewritten
every `lock_stale_seconds / 4` by a daemon thread) and a random token. It is
created with O_CREAT | O_EXCL, so of two runs started together exactly one
gets it; the other gets a `WorkdirError` naming the holder and what to do. A lock
whose holder is gone is taken over with a warning:
  - same host: the pid no longer exists (a SIGKILL, a crash, a reboot);
  - any host: the heartbeat is older than `runtime.lock_stale_seconds`;
and `runtime.force_unlock=true` takes any lock (for a holder you know is gone).
A stale lock is first renamed to a unique name, so of two runs that both find
it stale, only one can create the new one.

Multi-host: process 0 takes the lock for the job; the others learn the outcome
from it (a broadcast), so all of them fail or none does.

Object stores (gs://): there is no atomic create-if-absent through etils.epath,
so the lock there is best-effort: a second run that starts while the first is
writing its lock can miss it. One run per gs:// workdir is not guaranteed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np

from vdae.io import files
from vdae.io.errors import WorkdirError

log = logging.getLogger(__name__)

NAME = ".vdae.lock"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process: it exists
    return True
  return True


class WorkdirLock:
  """The held lock: `release()` (or leaving `hold`) removes it if it is still ours."""

  def __init__(self, workdir: str, stale_seconds: float):
    self.path = os.path.join(workdir, NAME)
    self.stale_seconds = float(stale_seconds)
    self.info = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": time.time(),
      "heartbeat": time.time(),
      "token": uuid.uuid4().hex,
    }
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  # --- the file ------------------------------------------------------------------
  def _create(self) -> bool:
    """Creates the lock file if there is none; False if one exists."""
    if files.is_remote(self.path):
      if files.exists(self.path):
        return False
      files.write_json(self.path, self.info)
      return True
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(self.info, f)
    return True

  def _holder(self) -> dict | None:
    """The current holder's record (None if the file vanished or is being written)."""
    try:
      return files.read_json(self.path)
    except (OSError, ValueError):
      return None

  def _why_stale(self, holder: dict) -> str | None:
    age = time.time() - float(holder.get("heartbeat", 0))
    if holder.get("host") == self.info["host"] and not _pid_alive(int(holder.get("pid", -1))):
      return f"its process {holder.get('pid')} on this host is gone"
    if age > self.stale_seconds:
      return f"its heartbeat is {age:.0f} s old (runtime.lock_stale_seconds={self.stale_seconds:g})"
    return None

  def _take_over(self) -> None:
    """Moves the old lock out of the way under a unique name (atomic locally)."""
    aside = f"{self.path}.stale.{self.info['token']}"
    try:
      if files.is_remote(self.path):
        files.remove(self.path)
      else:
        os.rename(self.path, aside)
        os.remove(aside)
    except FileNotFoundError:
      pass  # another run moved it first; our create decides

  def acquire(self, force: bool) -> None:
    for _ in range(20):
      if self._create():
        self._start_heartbeat()
        return
      holder = self._holder()
      if holder is None:  # the holder is writing it, or just released it: look again
        time.sleep(0.05)
        continue
      why = "runtime.force_unlock=true" if force else self._why_stale(holder)
      if why is None:
        age = time.time() - float(holder.get("heartbeat", 0))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        raise WorkdirError(
          f"workdir {os.path.dirname(self.path)!r} is in use by pid {holder.get('pid')} on "
          f"host {holder.get('host')} (started {started}, heartbeat {age:.0f} s ago). Wait "
          "for that run to finish, or, if it is gone, rerun with "
          "--config.runtime.force_unlock=true."
        )
      log.warning(
        "taking over the workdir lock of pid %s on host %s: %s",
        holder.get("pid"),
        holder.get("host"),
        why,
      )
      self._take_over()
      force = False
    raise WorkdirError(f"could not take the workdir lock {self.path}; try again.")

  # --- heartbeat -------------------------------------------------------------------
  def _start_heartbeat(self) -> None:
    def beat():
      while not self._stop.wait(max(self.stale_seconds / 4, 0.5)):
        if (self._holder() or {}).get("token") != self.info["token"]:
          log.warning("the workdir lock %s was taken by another run", self.path)
          return
        self.info["heartbeat"] = time.time()
        files.write_json(self.path, self.info)

    self._thread = threading.Thread(target=beat, name="vdae-lock-heartbeat", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
    if (self._holder() or {}).get("token") == self.info["token"]:
      with contextlib.suppress(FileNotFoundError):
        files.remove(self.path)


@contextlib.contextmanager
def hold(workdir: str, runtime_cfg):
  """Holds WORKDIR's lock for the block (process 0 for the job; all fail together)."""
  lock, error = None, None
  if jax.process_index() == 0:
    files.ensure_writable_dir(workdir)
    lock = WorkdirLock(workdir, runtime_cfg.lock_stale_seconds)
    try:
      lock.acquire(bool(runtime_cfg.force_unlock))
    except WorkdirError as e:
      lock, error = None, e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not ok and error is None:
      error = WorkdirError(f"process 0 could not lock the workdir {workdir!r}; its log says why.")
  if error is not None:
    raise error
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()
