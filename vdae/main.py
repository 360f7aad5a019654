"""Command line: flags only, then one call into the library.

  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=all
  python -m vdae.main --config=configs/digits.py --workdir=runs/digits --mode=pretrain \
      --config.stage1.num_steps=500

Any field of the config can be overridden with --config.<group>.<field>=value;
the config is locked, so a misspelt key or a wrong type is an error that names
it, and `vdae.schema.check` names every value out of range before anything runs.
"""

from __future__ import annotations

import importlib
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

# mode -> "module:function" under vdae.commands (imported on use, so --help stays fast)
COMMANDS = {
  "pretrain": "train:pretrain",
  "train_encoder": "train:train_encoder",
  "train_prior": "train:train_prior",
  "train_vae": "train:train_vae",
  "train_refiner": "train:train_refiner",
  "sample": "sample:sample",
  "encode": "encode:encode",
  "reconstruct": "reconstruct:reconstruct",
  "interpolate": "interpolate:interpolate",
  "evaluate": "evaluate:evaluate",
  "all": "run_all:run_all",
  "sweep": "sweep:sweep",
  "edit": "edit:edit",
}

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_MODE = flags.DEFINE_enum("mode", "all", list(COMMANDS), "What to run.")
flags.mark_flags_as_required(["config", "workdir"])


def command(mode: str):
  module, fn = COMMANDS[mode].split(":")
  return getattr(importlib.import_module(f"vdae.commands.{module}"), fn)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "grain", "tensorboard"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from vdae.commands import runner
  from vdae.io.errors import VdaeError

  try:
    runner.execute(_CONFIG.value, _WORKDIR.value, [command(_MODE.value)])
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
    msg = f"a --config.* flag names a field the config does not have: {detail}"
    print(f"vdae: error: {msg}", file=sys.stderr)
    sys.exit(2)


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
