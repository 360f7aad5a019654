"""Stage-2 train step: reverse-mode latent score vs the jacfwd baseline, in one run.

The public JAX port computes grad_x log q(z | x_t, t) with jax.jacfwd over
every input pixel (D forward passes); vdae uses one reverse-mode pass. Both
steps are compiled from the same loss and timed on the same batch; the ratio
is jacfwd time / reverse time.

  python -m vdae.benchmarks.bench_stage2 [--repeats 5] [--only digits|32x32]
"""

from __future__ import annotations

import argparse
import tempfile

import jax

from configs import digits
from vdae.benchmarks import common
from vdae.parallel import runtime
from vdae.training import stages


def _stage1_checkpoint(cfg, wd):
  """A 1-step stage-1 checkpoint: the benchmark needs the frozen model's shapes only."""
  c = cfg.copy_and_resolve_references()
  c.stage1.num_steps = 1
  c.stage1.image_every = 0
  stages.train("stage1", c, wd)


def configs():
  c = digits.get_config()
  yield "digits 8x8x1 (D=64)", c
  c32 = digits.get_config()
  c32.data.source = "npz"
  c32.data.path = common.synthetic_npz((32, 32, 3))
  c32.model.channels = 32
  c32.model.channel_mults = (1, 2, 2)
  c32.encoder.channel_mults = (1, 2, 2)
  # jacfwd carries 3072 tangents through every encoder activation: at batch 8
  # with 32 channels it asked for 88 GB. Small encoder, batch 1, so it fits in 24 GB.
  c32.encoder.channels = 8
  c32.encoder.groups = 4
  c32.stage2.batch_size = 1
  yield "32x32x3 (D=3072)", c32


def _trainer(cfg, wd, correction_impl: str):
  """The stage-2 trainer with its loss's latent score computed by `correction_impl`."""
  t = stages.trainer("stage2", cfg, wd)
  t.stage.loss_fn = stages.make_encoder_loss(cfg, correction_impl=correction_impl)
  return t


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--only", choices=("digits", "32x32"), default=None)
  args = ap.parse_args()
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s)")
  print(
    f"{'config':22s} {'batch':>5s} {'reverse ms':>11s} {'jacfwd ms':>11s} {'jacfwd/reverse':>15s}"
  )
  for name, cfg in configs():
    if args.only and not name.startswith(args.only):
      continue
    with tempfile.TemporaryDirectory() as wd:
      _stage1_checkpoint(cfg, wd)
      times = {}
      for corr in ("reverse", "jacfwd"):
        t = _trainer(cfg, wd, corr)
        compiled, state, spec, _, _, batch = common.compiled_step(t)
        reps = args.repeats if corr == "reverse" else max(2, args.repeats // 2)
        times[corr], _ = common.time_steps(compiled, state, spec.frozen, batch, reps)
      print(
        f"{name:22s} {cfg.stage2.batch_size:5d} {times['reverse'] * 1e3:11.1f} "
        f"{times['jacfwd'] * 1e3:11.1f} {times['jacfwd'] / times['reverse']:14.1f}x"
      )


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  main()
