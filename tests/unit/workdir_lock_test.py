"""One run per workdir: the lock refuses a live holder and takes over a dead one."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from vdae.io import workdir_lock
from vdae.io.errors import WorkdirError

pytestmark = pytest.mark.timeout(60)


class Cfg:
  lock_stale_seconds = 120.0
  force_unlock = False


def _write_holder(wd, **kw):
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
  holder.update({"heartbeat": time.time(), "token": "theirs", **kw})
  (wd / workdir_lock.NAME).write_text(json.dumps(holder))


def test_a_second_run_is_refused_with_the_holder_named(tmp_path):
  with workdir_lock.hold(str(tmp_path), Cfg()) as lock:
    assert json.loads((tmp_path / workdir_lock.NAME).read_text())["pid"] == os.getpid()
    with pytest.raises(WorkdirError) as e:
      with workdir_lock.hold(str(tmp_path), Cfg()):
        pass
    msg = str(e.value)
    assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in msg
    assert "--config.runtime.force_unlock=true" in msg
    assert lock.info["token"] == json.loads((tmp_path / workdir_lock.NAME).read_text())["token"]
  assert not (tmp_path / workdir_lock.NAME).exists()  # released


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _write_holder(tmp_path, pid=dead.pid)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(str(tmp_path), Cfg()):
      held = json.loads((tmp_path / workdir_lock.NAME).read_text())
  assert held["pid"] == os.getpid()
  assert f"taking over the workdir lock of pid {dead.pid}" in caplog.text
  assert "is gone" in caplog.text


def test_a_stale_heartbeat_from_another_host_is_taken_over(tmp_path, caplog):
  _write_holder(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 1000)
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(str(tmp_path), Cfg()):
      pass
  assert "heartbeat is 1000 s old" in caplog.text
  _write_holder(tmp_path, host="elsewhere", pid=1)  # alive elsewhere: refused
  with pytest.raises(WorkdirError, match="in use by pid 1 on host elsewhere"):
    with workdir_lock.hold(str(tmp_path), Cfg()):
      pass
  forced = Cfg()
  forced.force_unlock = True
  with workdir_lock.hold(str(tmp_path), forced):  # the user says the holder is gone
    assert json.loads((tmp_path / workdir_lock.NAME).read_text())["pid"] == os.getpid()


def test_the_heartbeat_is_refreshed_while_held(tmp_path):
  cfg = Cfg()
  cfg.lock_stale_seconds = 2.0  # beats every 0.5 s
  with workdir_lock.hold(str(tmp_path), cfg):
    first = json.loads((tmp_path / workdir_lock.NAME).read_text())["heartbeat"]
    deadline = time.time() + 10
    while json.loads((tmp_path / workdir_lock.NAME).read_text())["heartbeat"] == first:
      assert time.time() < deadline, "no heartbeat"
      time.sleep(0.1)
