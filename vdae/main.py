"""Command line: flags only, then one call into the library.

  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=all
  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=pretrain \
      --config.training.num_steps=500

Any field of the config can be overridden with --config.<group>.<field>=value;
the config is locked, so a misspelt key or a wrong type is an error.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

MODES = {}  # name -> (module, function); filled lazily so --help stays fast


def _register():
  MODES.update(
    {
      "pretrain": ("vdae.train", "pretrain"),
      "sample": ("vdae.modes", "sample"),
      "train_encoder": ("vdae.train_encoder", "train_encoder"),
      "encode": ("vdae.modes", "encode"),
      "reconstruct": ("vdae.modes", "reconstruct"),
      "interpolate": ("vdae.modes", "interpolate"),
      "train_vae": ("vdae.vae", "train_vae"),
      "evaluate": ("vdae.evaluate", "evaluate"),
      "all": ("vdae.modes", "run_all"),
    }
  )


_register()

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "all", list(MODES), "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  import importlib

  from vdae import config_check, runtime
  from vdae.errors import VdaeError

  config = _CONFIG.value
  try:
    config_check.check(config)
    runtime.initialize(config.runtime)
    module, fn = MODES[_MODE.value]
    getattr(importlib.import_module(module), fn)(config, _WORKDIR.value)
  except VdaeError as e:
    print(f"vdae: error: {e}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser, but a --config.<field> the config lacks is one line, exit 2.

  ml_collections raises AttributeError/KeyError (not a flags.Error) for an
  unknown field, which absl would print as a 60-line traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    detail = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\n", " ")
    detail = detail.replace("\\'", "").replace("'", "")  # KeyError's nested reprs
    detail = detail.replace(" Did you mean", ". Did you mean")
    print(
      f"vdae: error: a --config.* flag names a field the config does not have: {detail}",
      file=sys.stderr,
    )
    sys.exit(2)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
