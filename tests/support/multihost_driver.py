"""Test driver: stage 1 then stage 2 in one process, as `vdae.main` runs them.

The multi-host, kill and preemption tests start this once per process instead
of `python -m vdae.main` once per stage: one process start and one
`jax.distributed.initialize` cover both stages, and a preemption notice that
lands between the stages is still honoured. Flags and exit codes are those of
`vdae.main` (VdaeError -> 2, preemption -> 143):

  python tests/support/multihost_driver.py --config=configs/tiny.py --workdir=/tmp/w \
      --stages=pretrain,train_encoder --config.runtime.num_processes=2 ...
"""

from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STAGES = flags.DEFINE_list("stages", "pretrain,train_encoder", "Stages to run, in order.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  for noisy in ("absl", "orbax", "jax._src", "grain"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from vdae.commands import runner, train
  from vdae.io.errors import VdaeError

  def announced(name):
    fn = getattr(train, name)

    def run(config, workdir):
      fn(config, workdir)
      print(f"driver: {name} done", flush=True)

    run.__name__ = name
    return run

  try:
    runner.execute(_CONFIG.value, _WORKDIR.value, [announced(n) for n in _STAGES.value])
  except VdaeError as e:
    print(f"vdae: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
