"""The config's schema: valid choices and the up-front check.

Every enumerated field declares its choices where configs/base.py declares the
field (`one_of`); the up-front check and the code that dispatches on the
field (`require`) both read that one declaration. ml_collections already
rejects unknown keys and wrong types; `check` rejects values the code would
only trip over later (a misspelt sampler after an hour of training) and lists
every problem at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from vdae.io.errors import ConfigError

CHOICES: dict[str, tuple[str, ...]] = {}

# Every trained stage's config group has these fields (training/stages.py).
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

POSITIVE = (
  "encoder.latent_dim",
  "refiner.lam",
  "refiner.sample_num_steps",
  "sdedit.num_steps",
  "sampling.num_steps",
  "sampling.num_samples",
  "eval.batch_size",
  "loop.keep_checkpoints",
  *(f"{g}.{f}" for g in STAGE_GROUPS for f in ("num_steps", "batch_size", "log_every")),
  *(f"{g}.checkpoint_every" for g in STAGE_GROUPS),
)


PROTOCOLS = ("sample", "mode", "mean", "inverted")  # the decode protocols evaluation reports


def one_of(key: str, default: str, options: Sequence[str]) -> str:
  """Declares `key`'s valid values; returns the default (configs/base.py)."""
  options = tuple(options)
  if default not in options:
    raise ValueError(f"{key}: default {default!r} is not among {options}")
  CHOICES[key] = options
  return default


def choices(key: str) -> tuple[str, ...]:
  """The valid values of `key` as configs/base.py declares them."""
  if not CHOICES:  # the library was imported without building a config first
    from configs import base

    base.get_config()
  return CHOICES[key]


def require(key: str, value: str) -> str:
  """`value` if it is one of `key`'s choices, else a ConfigError naming them."""
  allowed = choices(key)
  if value not in allowed:
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}.")
  return value


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def check(config) -> None:
  """Raises ConfigError naming every field whose value is out of range."""
  choices("data.source")  # make sure the declarations are loaded
  problems = []
  for key, allowed in CHOICES.items():
    value = _get(config, key)
    if value not in allowed:
      problems.append(f"{key}={value!r} is not one of {', '.join(allowed)}")
  for key in POSITIVE:
    if _get(config, key) <= 0:
      problems.append(f"{key}={_get(config, key)} must be positive")
  for g in STAGE_GROUPS:
    for f in ("lr",):
      if _get(config, f"{g}.{f}") <= 0:
        problems.append(f"{g}.{f}={_get(config, f'{g}.{f}')} must be positive")
    for f in ("warmup_steps", "image_every"):
      if _get(config, f"{g}.{f}") < 0:
        problems.append(f"{g}.{f}={_get(config, f'{g}.{f}')} must be >= 0")
  temb = config.model.temb_dim
  if temb < 2 or temb % 2:
    problems.append(f"model.temb_dim={temb} must be even (half sines, half cosines)")
  if not 0.0 < config.sde.eps < 1.0:
    problems.append(f"sde.eps={config.sde.eps} must lie in (0, 1)")
  for key in ("stage2.beta_kl", "vae.beta_kl"):
    if _get(config, key) < 0:
      problems.append(f"{key}={_get(config, key)} must be >= 0")
  if config.stage2.weight_cap < 1.0:
    problems.append(
      f"stage2.weight_cap={config.stage2.weight_cap} must be >= 1 (it caps a weight >= 1)"
    )
  methods = CHOICES["sampling.method"]
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
