"""How long a run will take, said once a stage's first steps are timed.

Each training stage logs its expected wall time after its first steps past the compile
(measured, not guessed: the steps' own rate on this machine). Under --mode=all the line
also gives the command's time so far and what is certain to follow: this stage's remainder
is a lower bound on the rest, and the stages not yet timed are named with their steps.
On a CPU, a stage or a command expected to run past `LONG_ON_CPU_S` gets a warning that
names the configs sized for a CPU, since the accelerator configs (cifar10, cifar10_ddpm,
shapes:accelerator) take days to months there.
"""

from __future__ import annotations

import logging
import time

import jax

LONG_ON_CPU_S = 3 * 3600
TIMED_STEPS = 20  # steps past the compile before the rate is read

# --mode=all's plan: stage name -> steps it still has to run, in the order they run.
_plan: dict[str, int] = {}
_plan_start: float | None = None


def plan_all(remaining_steps: dict[str, int]) -> None:
  """Called by --mode=all before its first stage: what every stage still has to run."""
  global _plan, _plan_start
  _plan, _plan_start = dict(remaining_steps), time.perf_counter()


def clear_plan() -> None:
  global _plan, _plan_start
  _plan, _plan_start = {}, None


def duration(seconds: float) -> str:
  """3 s, 4.2 min, 2.5 h, 31 days: the unit a reader expects for that length."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.1f} min"
  if seconds < 48 * 3600:
    return f"{seconds / 3600:.1f} h"
  return f"{seconds / 86400:.0f} days"


def estimate_lines(name: str, done: int, seconds: float, left: int) -> list[tuple[int, str]]:
  """(log level, message) lines for stage `name` after `done` steps took `seconds`, with
  `left` steps still to run."""
  per_step = seconds / done
  rest = per_step * left
  lines = [
    (
      logging.INFO,
      f"{name}: {per_step * 1e3:.0f} ms a step over its first {done} steps; "
      f"about {duration(rest)} for the {left} still to run",
    )
  ]
  whole = rest
  if _plan and name in _plan and _plan_start is not None:
    names = list(_plan)
    later = [(n, s) for n, s in ((n, _plan[n]) for n in names[names.index(name) + 1 :]) if s]
    so_far = time.perf_counter() - _plan_start
    whole = so_far + rest
    untimed = ", ".join(f"{n} ({s} steps)" for n, s in later)
    lines.append(
      (
        logging.INFO,
        f"--mode=all: {duration(so_far)} so far, at least {duration(rest)} more"
        + (f"; not yet timed: {untimed}, then pictures and evaluation" if untimed else ""),
      )
    )
  if jax.default_backend() == "cpu" and whole > LONG_ON_CPU_S:
    what = "this command" if whole > rest else f"{name}"
    lines.append(
      (
        logging.WARNING,
        f"{what} is expected to take {duration(whole)} or more on this CPU: the config is "
        "sized for a GPU or TPU. On a CPU start from configs/digits.py or configs/shapes.py, "
        f"or set --config.{name}.num_steps lower.",
      )
    )
  return lines


class Countdown:
  """Progress lines of a long part of a command that is not a training loop (an
  evaluation's decodes, a likelihood solve): what is done of how much, and the rest at
  the rate so far; at most one line every `every` seconds, and always the last."""

  def __init__(self, what: str, total: int, unit: str, every: float = 15.0):
    self.what, self.total, self.unit, self.every = what, total, unit, every
    self.t0 = self._last = time.perf_counter()

  def line(self, done: int, note: str = "") -> str:
    spent = time.perf_counter() - self.t0
    text = f"{self.what}: {done}/{self.total} {self.unit} in {duration(spent)}"
    if 0 < done < self.total:
      text += f"; about {duration(spent / done * (self.total - done))} left"
    return text + (f" ({note})" if note else "")

  def due(self) -> bool:
    """Whether `every` seconds have passed since the last line (the clock restarts)."""
    now = time.perf_counter()
    if now - self._last < self.every:
      return False
    self._last = now
    return True

  def update(self, done: int, note: str = "") -> None:
    if self.due() or done >= self.total:
      logging.getLogger(__name__).info("%s", self.line(done, note))
