"""Where a run's wall time goes, with the machine's speed beside it.

`--mode=all` times each phase (every stage, the pictures, the evaluation) and
ends with a table in the log and WORKDIR/timings.json. A time means little
without the machine: machines of one kind differ 2-4x, so the measured f32
matmul peak is recorded with the times (benchmarks print the same figure).
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp

from vdae.io import files

log = logging.getLogger(__name__)

FILE = "timings.json"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
  """Median wall seconds of fn() (its result blocked on), after warmup calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak_flops(n: int = 2048, repeats: int = 5, rounds: int = 3, dtype=jnp.float32) -> float:
  """This machine's achieved matmul FLOP/s in `dtype` (float32 unless asked; all devices
  of the backend work on one jnp.dot here, so it is the whole-host figure): the best of
  `rounds` medians, since a first round on a cold CPU was seen to read half the peak."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x: x @ x)
  return max(2 * n**3 / median_time(lambda: f(a), repeats) for _ in range(rounds))


class Timings:
  """Wall seconds per named phase, in the order the phases first ran."""

  def __init__(self) -> None:
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

  def table(self, peak_flops: float) -> str:
    total = sum(self.seconds.values())
    rows = [
      f"{name:<14s} {s:8.1f} s  {s / max(total, 1e-9):6.1%}" for name, s in self.seconds.items()
    ]
    rows.append(f"{'total':<14s} {total:8.1f} s  ({total / 60:.1f} min)")
    rows.append(f"on a machine whose f32 matmul peak measures {peak_flops / 1e9:.1f} GFLOP/s")
    return "\n".join(rows)

  def write(self, workdir: str) -> dict:
    """Logs the table and writes WORKDIR/timings.json (process 0); returns what it wrote."""
    peak = matmul_peak_flops()
    out = {
      "seconds": dict(self.seconds),
      "total_seconds": sum(self.seconds.values()),
      "matmul_peak_gflops": peak / 1e9,
      "backend": jax.default_backend(),
      "devices": jax.device_count(),
      "processes": jax.process_count(),
    }
    log.info("where the time went:\n%s", self.table(peak))
    if jax.process_index() == 0:
      files.write_json(os.path.join(workdir, FILE), out)
    return out
