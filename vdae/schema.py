"""The config's rules: each field's choices and limits declared on the field, and the
up-front check.

configs/base.py declares a constrained field with `field(default, ...)`: its type (the
default's), its valid values or its bounds, next to its name. The declaration is an
ml_collections FieldReference, so it stays with the ConfigDict through command-line
overrides and deep copies, and the code reads plain values. ml_collections already
rejects unknown keys and wrong types; `check` rejects values the code would only trip
over later (a misspelt sampler after an hour of training) and lists every problem at
once. Library code that dispatches on a field checks its value against the choices it
owns (`require`), so a bad value passed around the config is named there too.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from vdae.io.errors import ConfigError

# Every trained stage's config group has these fields (vdae/training/stages/base.py).
STAGE_FIELDS = (
  "num_steps",
  "batch_size",
  "lr",
  "warmup_steps",
  "log_every",
  "image_every",
  "checkpoint_every",
)
STAGE_GROUPS = ("stage1", "stage2", "prior", "vae", "refiner")

PROTOCOLS = ("sample", "mode", "mean", "inverted")  # the decode protocols evaluation reports


class Field(ml_collections.FieldReference):
  """A config field with its rule: one of `choices`, or a number `positive` (> 0) or
  `at_least` a bound (`why` says why, in the message)."""

  def __init__(
    self,
    default,
    choices: Sequence[str] | None = None,
    positive: bool = False,
    at_least: float | None = None,
    why: str = "",
  ):
    super().__init__(default, field_type=type(default))
    self.choices = None if choices is None else tuple(choices)
    self.positive, self.at_least, self.why = positive, at_least, why
    if self.choices is not None and default not in self.choices:
      raise ValueError(f"default {default!r} is not among {self.choices}")

  def __setstate__(self, state):
    # FieldReference restores only its own attributes (copy.deepcopy, pickle).
    super().__setstate__(state)
    self.choices, self.positive = state["choices"], state["positive"]
    self.at_least, self.why = state["at_least"], state["why"]

  def problem(self, key: str) -> str | None:
    value = self.get()
    if self.choices is not None and value not in self.choices:
      return f"{key}={value!r} is not one of {', '.join(self.choices)}"
    if self.positive and value <= 0:
      return f"{key}={value} must be positive"
    if self.at_least is not None and value < self.at_least:
      return f"{key}={value} must be >= {self.at_least:g}" + (f" ({self.why})" if self.why else "")
    return None


def field(default, *, choices=None, positive=False, at_least=None, why="") -> Field:
  """Declares a config field with its rule (configs/base.py)."""
  return Field(default, choices, positive, at_least, why)


def fields(config, prefix: str = ""):
  """(dotted key, Field) of every declared field of `config`, in key order."""
  for name, value in config.items(preserve_field_references=True):
    key = f"{prefix}{name}"
    if isinstance(value, Field):
      yield key, value
    elif isinstance(value, ml_collections.ConfigDict):
      yield from fields(value, key + ".")


def require(key: str, value: str, choices: Sequence[str]) -> str:
  """`value` if it is one of `choices` (field `key`'s), else a ConfigError naming them."""
  if value not in choices:
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}.")
  return value


def check(config) -> None:
  """Raises ConfigError naming every field whose value breaks its rule, and every
  cross-field rule broken. `config` is one configs/ built (or a deep copy): a
  copy_and_resolve_references() copy has dropped its declarations."""
  declarations = dict(fields(config))
  if not declarations:
    raise ValueError("config carries no field declarations: check the ConfigDict configs/ built")
  problems = [p for key, f in declarations.items() if (p := f.problem(key))]
  temb = config.model.temb_dim
  if temb < 2 or temb % 2:
    problems.append(f"model.temb_dim={temb} must be even (half sines, half cosines)")
  if not 0.0 < config.sde.eps < 1.0:
    problems.append(f"sde.eps={config.sde.eps} must lie in (0, 1)")
  methods = declarations["sampling.method"].choices
  bad = [m for m in config.eval.timing_methods if m and m not in methods]
  if bad:
    problems.append(f"eval.timing_methods has {bad}; the samplers are {', '.join(methods)}")
  bad = [p for p in config.eval.protocols if p not in PROTOCOLS]
  if bad or not config.eval.protocols:
    problems.append(f"eval.protocols={tuple(config.eval.protocols)}: use some of {PROTOCOLS}")
  if config.eval.mean_decodes < 1 or config.eval.mode_num_steps < 1:
    problems.append("eval.mean_decodes and eval.mode_num_steps must be >= 1")
  if not config.sde.eps < config.sdedit.t0 <= 1.0:
    problems.append(f"sdedit.t0={config.sdedit.t0} must lie in (sde.eps, 1]")
  prof = tuple(config.loop.profile_steps)
  if prof and not (len(prof) == 2 and 1 <= prof[0] <= prof[1]):
    problems.append(
      f"loop.profile_steps={prof} must be () or (first, last) with 1 <= first <= last"
    )
  if problems:
    raise ConfigError(
      "bad config values: " + "; ".join(problems) + ". Set them with --config.<key>=..."
    )
