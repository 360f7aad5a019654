"""How every command runs: config check, multi-host start-up, the workdir lock,
preemption notices and restored parameters reused across the commands, then the
command; `vdae.main` and the test driver both use it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from vdae import schema
from vdae.io import pretrained, workdir_lock
from vdae.parallel import runtime
from vdae.training import preemption, restore


def execute(config, workdir: str, commands: Sequence[Callable]) -> None:
  """Runs each command(config, workdir) in order, holding WORKDIR's lock."""
  schema.check(config)
  pretrained.resolve_config(config)  # an imported score model brings its own SDE
  runtime.cpu_kernels(config.runtime.cpu_ynnpack)
  runtime.compile_cache(config.runtime)
  runtime.initialize(config.runtime)
  with preemption.notices(), workdir_lock.hold(workdir, config.runtime), restore.reuse_loaded():
    for i, command in enumerate(commands):
      if i:
        preemption.exit_if_requested(f"after {commands[i - 1].__name__}")
      command(config, workdir)
