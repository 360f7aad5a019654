"""Checks a config's values before any work starts.

ml_collections already rejects unknown keys and wrong types; this rejects
values the code would only trip over later (a misspelt sampler after an hour
of training), and lists every problem at once.
"""

from __future__ import annotations

from vdae.errors import ConfigError

CHOICES = {
  "data.source": ("digits", "npz", "folder", "array_record"),
  "model.embedding": ("sinusoidal", "fourier"),
  "model.dtype": ("float32", "bfloat16"),
  "sde.kind": ("vp", "subvp", "ve"),
  "training.on_nonfinite": ("stop", "skip"),
  "optim.schedule": ("constant", "cosine"),
  "stage2.loss": ("eps", "score"),
  "stage2.time_sampling": ("uniform", "stratified"),
  "stage2.encode_split": ("train", "test"),
  "sampling.method": ("em", "pc", "ode"),
  "sampling.kernel": ("auto", "pallas", "reference"),
  "sampling.loop": ("auto", "scan", "python"),
  "sampling.source": ("auto", "score", "encoder"),
  "eval.bpd_solver": ("tsit5", "dopri5"),
}

POSITIVE = (
  "training.num_steps",
  "training.batch_size",
  "training.log_every",
  "training.checkpoint_every",
  "stage2.num_steps",
  "stage2.batch_size",
  "stage2.log_every",
  "stage2.checkpoint_every",
  "encoder.latent_dim",
  "sampling.num_steps",
  "sampling.num_samples",
  "eval.batch_size",
)


def _get(config, dotted: str):
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def check(config) -> None:
  """Raises ConfigError naming every field whose value is out of range."""
  problems = []
  for key, allowed in CHOICES.items():
    value = _get(config, key)
    if value not in allowed:
      problems.append(f"{key}={value!r} is not one of {', '.join(allowed)}")
  for key in POSITIVE:
    if _get(config, key) <= 0:
      problems.append(f"{key}={_get(config, key)} must be positive")
  temb = config.model.temb_dim
  if temb < 2 or temb % 2:
    problems.append(f"model.temb_dim={temb} must be even (half sines, half cosines)")
  if not 0.0 < config.sde.eps < 1.0:
    problems.append(f"sde.eps={config.sde.eps} must lie in (0, 1)")
  if config.stage2.beta_kl < 0:
    problems.append(f"stage2.beta_kl={config.stage2.beta_kl} must be >= 0")
  bad = [m for m in config.eval.timing_methods if m and m not in CHOICES["sampling.method"]]
  if bad:
    problems.append(f"eval.timing_methods has {bad}; the samplers are em, pc, ode")
  if problems:
    raise ConfigError(
      "bad config values: " + "; ".join(problems) + ". Set them with --config.<key>=..."
    )
