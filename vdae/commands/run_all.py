"""--mode=all: every stage in the stage table, the pictures, then the evaluation
(and, where the data has factors, the latent edits of --mode=edit), ending with
where the time went (vdae/io/timings.py).

Each step resumes where a previous run stopped, so re-running `all` after an
interruption finishes the job without redoing what is done. A SIGTERM between
steps exits 143 there (training steps save first; see training/preemption.py).
"""

from __future__ import annotations

from vdae.commands import edit, evaluate, interpolate, reconstruct, sample
from vdae.io import timings
from vdae.training import eta, preemption, stages


def _steps_to_run(config, workdir: str) -> dict[str, int]:
  """The steps each stage still has to run, in the order they run (0: imported or done)."""
  out = {}
  for name, stage in stages.STAGES.items():
    done = stages.trained_step(name, config, workdir)
    out[name] = 0 if stage.imported(config) else max(config[name].num_steps - done, 0)
  return out


def run_all(config, workdir: str):
  """Returns evaluate's metrics; the per-phase wall times go to WORKDIR/timings.json."""
  spent = timings.Timings()
  with spent.phase("setup"):
    ctx = stages.context(config, workdir)
    stages.check_shapes(stages.STAGES, config, ctx.image_shape)  # all, before the first trains
  eta.plan_all(_steps_to_run(config, workdir))
  try:
    for name in stages.STAGES:
      preemption.exit_if_requested(f"before {name}")
      with spent.phase(name):
        stages.train(name, config, workdir, ctx.mesh, ctx.splits)
  finally:
    eta.clear_plan()
  for picture in (reconstruct.reconstruct, sample.vdae_samples, interpolate.interpolate):
    preemption.exit_if_requested(f"before {picture.__name__}")
    with spent.phase("pictures"):
      picture(config, workdir)
  preemption.exit_if_requested("before evaluate")
  with spent.phase("evaluate"):
    metrics = evaluate.evaluate(config, workdir)
  if ctx.splits["train"].factors is not None:
    preemption.exit_if_requested("before edit")
    with spent.phase("edit"):
      edit.edit(config, workdir)
  spent.write(workdir)
  return metrics
