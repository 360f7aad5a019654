"""User-facing errors: each names the problem and what to do about it.

`vdae.main` turns any `VdaeError` into a one-paragraph message and exit code 2,
with nothing already written touched.
"""


class VdaeError(Exception):
  """Base of every error caused by the user's input or environment."""


class ConfigError(VdaeError, ValueError):
  """A config value is missing, unknown, of the wrong type or inconsistent."""


class DataError(VdaeError):
  """The dataset is missing, empty, malformed or holds non-finite values."""


class CheckpointError(VdaeError):
  """A checkpoint is missing, damaged, or does not match the config."""


class WorkdirError(VdaeError):
  """The workdir cannot be created or written."""


class NonFiniteError(VdaeError):
  """Training produced a non-finite loss or gradient."""


def require_local(key: str, path: str) -> None:
  """Data and imported weights are read from local disk (the ArrayRecord reader, numpy
  and safetensors open plain files): a bucket path is refused with what to do instead."""
  if "://" in path:
    raise ConfigError(
      f"{key}={path!r} is a remote path, but it is read from local disk: copy it to every "
      f"host first (on a TPU VM: launch/tpu_setup.sh -d '{path}=DIR') and set {key} to DIR."
    )
