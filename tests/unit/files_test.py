"""vdae/io/files.py: outputs are written whole or not at all."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from vdae.io import files

pytestmark = pytest.mark.timeout(30)


def test_round_trips_and_creates_directories(tmp_path):
  path = str(tmp_path / "a" / "b" / "x.npz")
  files.write_npz(path, mu=np.arange(6.0).reshape(2, 3), index=np.array([4, 7]))
  got = files.read_npz(path)
  np.testing.assert_array_equal(got["mu"], np.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(got["index"], [4, 7])
  files.write_json(str(tmp_path / "m.json"), {"b": 1.5, "a": 2.0})
  assert files.read_json(str(tmp_path / "m.json")) == {"a": 2.0, "b": 1.5}
  assert files.isdir(str(tmp_path / "a")) and not files.isdir(str(tmp_path / "nope"))
  assert files.listdir(str(tmp_path)) == ["a", "m.json"]  # no temporaries left
  assert files.listdir(str(tmp_path / "nope")) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = str(tmp_path / "metrics.json")
  files.write_json(path, {"recon_mse": 0.5})

  def broken(_):
    raise ValueError("the figure could not be drawn")

  with pytest.raises(ValueError):
    files.write_with(path, broken)

  def full_disk(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "replace", full_disk)
  with pytest.raises(OSError, match="No space left"):
    files.write_json(path, {"recon_mse": 0.1})
  monkeypatch.undo()
  assert files.read_json(path) == {"recon_mse": 0.5}
  assert os.listdir(tmp_path) == ["metrics.json"]
