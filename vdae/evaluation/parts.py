"""Resumable evaluation: each finished part (a model's metrics, a batch of a likelihood
solve) written at once under WORKDIR/eval/parts/, keyed by what it was computed from.

A part is `<name>.json` (its key, the inputs that made the key, and its values), with
`<name>.npz` beside it where it has arrays, written first: the JSON marks the part whole.
The key is a hash of the inputs: the config groups the evaluation reads, the judge, and
each checkpoint the model reads (its step and the hash of its recorded metadata), so a
retrained stage invalidates the parts of the models that read it and no others. A part
whose key differs is computed again and overwritten.

Several processes: each process computes every part (the computations are collective);
process 0 writes, and whether a part is reused is process 0's answer, so no process
skips a computation the others run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
from etils import epath

from vdae.io import files

log = logging.getLogger(__name__)


def digest(obj) -> str:
  """sha256 of a JSON-able value, keys sorted (non-JSON leaves by their str)."""
  text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str) -> str | None:
  """sha256 of a file's bytes (None if it does not exist)."""
  try:
    data = epath.Path(path).read_bytes()
  except (FileNotFoundError, OSError):
    return None
  return hashlib.sha256(data).hexdigest()


def _agree(flag: bool) -> bool:
  """Process 0's flag on every process."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils

  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


class Store:
  """The parts of one evaluation under `directory`, keyed by `inputs` (JSON-able)."""

  def __init__(self, directory: str, inputs: dict):
    self.directory, self.inputs = directory, inputs
    self.key = digest(inputs)

  def child(self, **more) -> Store:
    """The same directory, keyed by these inputs and `more`."""
    return Store(self.directory, {**self.inputs, **more})

  def _path(self, name: str, ext: str) -> str:
    return os.path.join(self.directory, f"{name.replace('/', '.')}.{ext}")

  def load(self, name: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(values, arrays) of part `name` if it was computed from these inputs, else None."""
    found = None
    try:
      part = files.read_json(self._path(name, "json"))
      if part.get("key") == self.key:
        arrays = files.read_npz(self._path(name, "npz")) if part.get("arrays") else {}
        found = (part["values"], arrays)
    except (FileNotFoundError, OSError, ValueError, KeyError):
      found = None  # absent, or damaged: computed again
    if not _agree(found is not None):
      return None
    if found is None:
      raise FileNotFoundError(
        f"process {jax.process_index()} cannot read {self._path(name, 'json')}, which "
        "process 0 reads: every process must see the same --workdir"
      )
    return found

  def save(self, name: str, values: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    """Writes part `name` whole (process 0; arrays first, then the JSON that marks it)."""
    if jax.process_index() != 0:
      return
    if arrays:
      files.write_npz(self._path(name, "npz"), **arrays)
    part = {"key": self.key, "inputs": self.inputs, "values": values, "arrays": bool(arrays)}
    files.write_json(self._path(name, "json"), part)


class Nowhere(Store):
  """A store that keeps nothing (library callers without a workdir)."""

  def __init__(self):
    super().__init__("", {})

  def load(self, name):
    return None

  def save(self, name, values, arrays=None):
    return None
