"""Files in the workdir, local or on an object store (gs://), written whole.

Every output (PNG grids, .npz arrays, metrics.json, the classifier cache) goes
through here: etils.epath gives one API over local disks and gs:// (gcsfs on
TPU VMs, as Orbax uses), and a reader never sees a half-written file. Locally a
write goes to a hidden temporary name and is renamed into place; an object
store publishes an object only once its upload completes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from etils import epath

from vdae.io.errors import WorkdirError


def is_remote(path: str) -> bool:
  return "://" in os.fspath(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def remove(path: str) -> None:
  """Removes a file (FileNotFoundError if there is none)."""
  if is_remote(path):
    p = epath.Path(path)
    if not p.exists():
      raise FileNotFoundError(path)
    p.unlink()
    return
  os.remove(path)


def ensure_writable_dir(path: str) -> None:
  """Creates `path` if needed and checks this process can write there (WorkdirError)."""
  if is_remote(path):
    return  # object stores have no directories to create
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(
      f"workdir {path!r} is not writable ({e.strerror}). Pick another --workdir."
    ) from e


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
  """Entry names of a directory ([] if it does not exist)."""
  p = epath.Path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` whole, creating its directory."""
  path = os.fspath(path)
  if is_remote(path):
    epath.Path(path).write_bytes(data)
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  head, name = os.path.split(path)
  tmp = os.path.join(head, f".{name}.tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # the write failed (a full disk): leave nothing behind
      os.remove(tmp)


def write_with(path: str, save: Callable[[io.BytesIO], Any]) -> None:
  """`save(buffer)` (PIL, matplotlib, np.savez) written whole to `path`."""
  buf = io.BytesIO()
  save(buf)
  write_bytes(path, buf.getvalue())


def write_json(path: str, obj: Any) -> None:
  write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def read_json(path: str) -> Any:
  return json.loads(epath.Path(path).read_text())


def write_npz(path: str, **arrays: np.ndarray) -> None:
  write_with(path, lambda f: np.savez(f, **arrays))


def read_npz(path: str) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
    return {k: f[k] for k in f.files}
