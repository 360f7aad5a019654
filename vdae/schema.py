"""The config's schema: valid choices, renamed keys, and the up-front check.

Every enumerated field declares its choices where configs/base.py declares the
field (`one_of`); the up-front check and the code that dispatches on the
field (`require`) both read that one declaration. ml_collections already
rejects unknown keys and wrong types; `check` rejects values the code would
only trip over later (a misspelt sampler after an hour of training) and lists
every problem at once. `RENAMED` maps override names of earlier versions to
the fields that replaced them, for the command line's error message.
"""

from __future__ import annotations

from collections.abc import Sequence

from vdae.io.errors import ConfigError

CHOICES: dict[str, tuple[str, ...]] = {}

# Old dotted key -> new dotted key (None: the field is gone).
RENAMED: dict[str, str | None] = {
  "training.batch_size": "stage1.batch_size",
  "training.num_steps": "stage1.num_steps",
  "training.likelihood_weighting": "stage1.likelihood_weighting",
  "training.log_every": "stage1.log_every",
  "training.sample_every": "stage1.image_every",
  "training.checkpoint_every": "stage1.checkpoint_every",
  "training.ema_decay": "loop.ema_decay",
  "training.keep_checkpoints": "loop.keep_checkpoints",
  "training.async_checkpointing": "loop.async_checkpointing",
  "training.on_nonfinite": "loop.on_nonfinite",
  "optim.lr": "stage1.lr",
  "optim.warmup_steps": "stage1.warmup_steps",
  "stage2.recon_every": "stage2.image_every",
  "vae.recon_every": "vae.image_every",
}

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


def renamed_hint(dotted: str) -> str | None:
  """For an override of a field that no longer exists, the message naming its successor."""
  key = dotted.removeprefix("config.")
  if key in RENAMED:
    new = RENAMED[key]
    return f"--config.{key} is now --config.{new}" if new else f"--config.{key} was removed"
  group = key.split(".")[0]
  moved = sorted({v.split(".")[0] for k, v in RENAMED.items() if k.startswith(group + ".") and v})
  if group == "training" and moved:
    return f"the `training` group was split into {', '.join(moved)}; see configs/base.py"
  return None


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
