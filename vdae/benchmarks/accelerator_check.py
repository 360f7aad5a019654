"""The accelerator check: what only a GPU or TPU host can show, in one command, one
table and one JSON.

  python -m vdae.benchmarks.accelerator_check [--json OUT] [--budget 450] [--dry]

Sections, in order, each bounded by what is left of --budget seconds (a section that
fails is recorded with its error and the rest still run, so one broken part does not
hide the others):

  device    backend, device kind and count; the measured f32 and bf16 matmul peaks; the
            measured copy bandwidth beside the device's datasheet HBM bandwidth.
  kernel    the fused Pallas reverse step and stage-2 residual lowered for this backend
            (Triton on GPU, Mosaic on TPU) against the XLA reference: max |error|,
            time, achieved GB/s and its fraction of the datasheet HBM bandwidth.
  train     the stage-1 and stage-2 train steps of configs/cifar10.py (32x32x3, the
            DDPM++ score network and its encoder) in float32 and bfloat16: step time,
            images/s, XLA's FLOPs x the rate, MFU against the measured matmul peak of
            the step's dtype (and the datasheet bf16 peak where the device is known).
  imported  the stage-2 step on google/ddpm-cifar10-32's UNet (35.7M parameters, random
            weights written as a diffusers directory and read back as a real one is).
  decode    VDAE decoding throughput, images/s at DPM-Solver++(2M)-SDE with 30 steps
            (the evaluation's `sample` protocol).
  run_all   `python -m vdae.main --mode=all` on synthetic 32x32x3 data with
            configs/cifar10.py's networks and a few hundred steps a stage: every stage,
            the pictures and the evaluation on the device; its timings.json.

--dry (the default on CPU) runs the same code paths at sizes a 2-core CPU finishes in
about two minutes (8x8 images, one-level networks, a few steps, the kernel in Pallas
interpret mode),
so the test suite runs it and it cannot rot; its figures say nothing about speed. Every
section's figures sit beside the peak measured in the same run: compare as ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from configs import cifar10
from vdae.benchmarks import bench_imported, common
from vdae.diffusion import sde as sde_lib
from vdae.io import timings
from vdae.kernels import reference
from vdae.parallel import runtime
from vdae.training import loop, stages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Datasheet figures by device kind (substring, lower case): HBM GB/s and dense bf16
# TFLOP/s. Only for context: MFU is taken against the peak measured in the run.
DATASHEET = (
  ("h200", 4800.0, 989.0),
  ("h100 pcie", 2000.0, 756.0),
  ("h100", 3350.0, 989.0),
  ("a100-sxm4-80gb", 2039.0, 312.0),
  ("a100", 1555.0, 312.0),
  ("l4", 300.0, 121.0),
  ("tpu v6", 1640.0, 918.0),
  ("tpu v5p", 2765.0, 459.0),
  ("tpu v5", 819.0, 197.0),
  ("tpu v4", 1228.0, 275.0),
)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What each section runs at: the real sizes, or the dry run's."""

  peak_n: int
  copy_mib: int
  kernel_shapes: tuple[tuple[int, int], ...]
  repeats: int
  train_batch: int
  imported_batch: int
  decode_batch: int
  run_steps: int
  image: int  # side of the synthetic images
  shrink: bool  # the networks shrunk to a CPU's size (one level, attention at it)


REAL = Sizes(
  8192, 1024, ((256, 3072), (256, 12288), (1024, 12288)), 20, 128, 128, 256, 200, 32, False
)
DRY = Sizes(256, 8, ((8, 64),), 2, 4, 2, 2, 2, 8, True)

# The dry run's networks: configs/cifar10.py's code paths (attention, bf16) at one level.
SHRUNK_MODEL = dict(channels=8, channel_mults=(1,), num_res_blocks=1, attn_resolutions=(8,))
SHRUNK_MODEL.update(groups=4, temb_dim=16)
SHRUNK_ENCODER = dict(channels=8, channel_mults=(1,), num_res_blocks=1, groups=4, latent_dim=8)


def datasheet(kind: str) -> tuple[float | None, float | None]:
  kind = kind.lower()
  for name, hbm, bf16 in DATASHEET:
    if name in kind:
      return hbm, bf16
  return None, None


def copy_bandwidth(mib: int) -> float:
  """Bytes/s of y = x + 1 over a mib-MiB array: one read and one write per element."""
  x = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
  f = jax.jit(lambda v: v + 1.0)
  return 2 * x.nbytes / timings.median_time(lambda: f(x), 10)


# --- sections ---------------------------------------------------------------------------
def device_section(sizes: Sizes, out: dict) -> list[dict]:
  dev = jax.devices()[0]
  hbm, bf16_sheet = datasheet(dev.device_kind)
  out.update(
    backend=jax.default_backend(),
    device_kind=dev.device_kind,
    device_count=jax.device_count(),
    process_count=jax.process_count(),
    peak_f32_flops=timings.matmul_peak_flops(sizes.peak_n),
    peak_bf16_flops=timings.matmul_peak_flops(sizes.peak_n, dtype=jnp.bfloat16),
    copy_bytes_per_s=copy_bandwidth(sizes.copy_mib),
    datasheet_hbm_bytes_per_s=hbm and hbm * 1e9,
    datasheet_bf16_flops=bf16_sheet and bf16_sheet * 1e12,
  )
  return [
    {"what": "f32 matmul peak", "value": f"{out['peak_f32_flops'] / 1e12:.2f} TFLOP/s"},
    {"what": "bf16 matmul peak", "value": f"{out['peak_bf16_flops'] / 1e12:.2f} TFLOP/s"},
    {
      "what": "copy bandwidth",
      "value": f"{out['copy_bytes_per_s'] / 1e9:.0f} GB/s"
      + (f" (datasheet HBM {hbm:.0f})" if hbm else ""),
    },
  ]


def kernel_section(sizes: Sizes, dev: dict) -> list[dict]:
  from vdae.kernels import pallas_fused_step as pf

  interpret = dev["backend"] == "cpu"
  # The fraction is of the datasheet HBM bandwidth, or of the measured copy rate when the
  # device is not in DATASHEET.
  hbm = dev["datasheet_hbm_bytes_per_s"] or dev["copy_bytes_per_s"]
  of = "HBM" if dev["datasheet_hbm_bytes_per_s"] else "copy rate"
  spec = reference.StepSpec(sde_lib.make("vp"), temb_dim=128, time_scale=1000.0)
  rows = []
  for b, d in sizes.kernel_shapes:
    ks = jax.random.split(jax.random.key(0), 5)
    x, eps, c, noise = (jax.random.normal(k, (b, d), jnp.float32) for k in ks[:4])
    t = jax.random.uniform(ks[4], (b,), jnp.float32, spec.sde.eps, 1.0)
    dt = jnp.full((b,), 1e-3, jnp.float32)
    ops = {
      "reverse step": (
        (x, eps, c, noise, t, dt),
        4 * (5 * b * d + 2 * b + b * spec.temb_dim),
        functools.partial(reference.reference_reverse_step, spec=spec),
        functools.partial(pf.fused_reverse_step, spec=spec, interpret=interpret),
      ),
      "stage-2 residual": (
        (eps, c, noise, t),
        4 * (3 * b * d + 2 * b),
        functools.partial(reference.reference_stage2_residual, spec=spec),
        functools.partial(pf.fused_stage2_residual, spec=spec, interpret=interpret),
      ),
    }
    for op, (args, nbytes, ref_fn, kern_fn) in ops.items():
      ref_fn, kern_fn = jax.jit(ref_fn), jax.jit(kern_fn)
      want, got = ref_fn(*args), kern_fn(*args)
      err = max(
        float(jnp.max(jnp.abs(jnp.asarray(g, jnp.float32) - w)))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
      )
      row = {"what": f"{op} {b}x{d}", "max_abs_error": err}
      if not interpret:  # interpret mode emulates the kernel: its time means nothing
        t_ref = timings.median_time(lambda f=ref_fn, a=args: f(*a), sizes.repeats)
        t_kern = timings.median_time(lambda f=kern_fn, a=args: f(*a), sizes.repeats)
        row.update(
          kernel_seconds=t_kern,
          reference_seconds=t_ref,
          kernel_gb_per_s=nbytes / t_kern / 1e9,
          reference_gb_per_s=nbytes / t_ref / 1e9,
          kernel_of_hbm=nbytes / t_kern / hbm,
        )
      row["value"] = f"max|err| {err:.2e}" + (
        f", kernel {row['kernel_gb_per_s']:.0f} GB/s ({row['kernel_of_hbm']:.0%} of {of}), "
        f"XLA {row['reference_gb_per_s']:.0f} GB/s"
        if "kernel_seconds" in row
        else " (interpret mode: not timed)"
      )
      rows.append(row)
  return rows


def _synthetic_config(sizes: Sizes, npz: str):
  """configs/cifar10.py on the synthetic npz (its networks shrunk in the dry run)."""
  c = cifar10.get_config()
  c.data.source, c.data.path, c.data.random_flip = "npz", npz, False
  if sizes.shrink:  # the same network code at a CPU's size
    c.model.update(SHRUNK_MODEL)
    c.encoder.update(SHRUNK_ENCODER)
  return c


def _time_stage(trainer: loop.Trainer, repeats: int, dev: dict, dtype: str) -> dict:
  compiled, state, stage, flops, _, batch = common.compiled_step(trainer)
  sec, state = common.time_steps(compiled, state, stage.frozen, batch, repeats)
  peak = dev["peak_bf16_flops"] if dtype == "bfloat16" else dev["peak_f32_flops"]
  row = {
    "step_seconds": sec,
    "images_per_s": stage.group.batch_size / sec,
    "flops_per_step": flops,
    "flops_per_s": flops / sec,
    "mfu_of_measured_peak": flops / sec / peak,
  }
  if dev["datasheet_bf16_flops"]:
    row["mfu_of_datasheet_bf16"] = flops / sec / dev["datasheet_bf16_flops"]
  row["value"] = (
    f"{sec * 1e3:.1f} ms/step, {row['images_per_s']:.0f} img/s, "
    f"{row['flops_per_s'] / 1e12:.2f} TFLOP/s, MFU {row['mfu_of_measured_peak']:.1%} "
    f"of measured {dtype} peak"
  )
  return row, state


def train_section(sizes: Sizes, dev: dict, tmp: str, npz: str, keep: dict) -> list[dict]:
  rows = []
  for dtype in ("float32", "bfloat16"):
    cfg = _synthetic_config(sizes, npz)
    cfg.model.dtype = dtype
    cfg.stage1.batch_size = cfg.stage2.batch_size = sizes.train_batch
    wd = os.path.join(tmp, f"train_{dtype}")
    ctx = stages.context(cfg, wd)
    t1 = loop.Trainer(stages.ScoreModel(ctx))
    row, state = _time_stage(t1, sizes.repeats, dev, dtype)
    rows.append({"what": f"stage 1 {dtype} batch {sizes.train_batch}", **row})
    # Stage 2 on these score parameters (its own run would read a stage-1 checkpoint).
    t2 = loop.Trainer(stages.Encoder(ctx, score_params=state.ema_params))
    row, state2 = _time_stage(t2, sizes.repeats, dev, dtype)
    rows.append({"what": f"stage 2 {dtype} batch {sizes.train_batch}", **row})
    keep[dtype] = (cfg, ctx, state, state2)
  return rows


def imported_section(sizes: Sizes, dev: dict, tmp: str, npz: str) -> list[dict]:
  d = os.path.join(tmp, "ddpm")
  if sizes.shrink:  # a small UNet2DModel of the same block types
    path = _small_diffusers_checkpoint(d)
  else:
    path = bench_imported.random_checkpoint(d)
  cfg = bench_imported.config(path, sizes.imported_batch, "bfloat16")
  cfg.data.path = npz
  if sizes.shrink:
    cfg.encoder.update(SHRUNK_ENCODER)
  t = stages.trainer("stage2", cfg, os.path.join(tmp, "imported_wd"))
  params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(t.stage.frozen))
  row, _ = _time_stage(t, sizes.repeats, dev, "bfloat16")
  return [
    {"what": f"imported UNet ({params / 1e6:.1f}M) stage 2 bf16", "parameters": params, **row}
  ]


def _small_diffusers_checkpoint(directory: str) -> str:
  """google/ddpm-cifar10-32's block types at 8x8, two levels and a sixteenth of its width
  (the dry run's)."""
  with open(os.path.join(bench_imported.CIFAR10_CONFIG, "config.json")) as f:
    blocks = json.load(f)
  return bench_imported.random_checkpoint(
    directory,
    block_out_channels=[8, 16],
    layers_per_block=1,
    norm_num_groups=4,
    sample_size=8,
    down_block_types=blocks["down_block_types"][:2],
    up_block_types=blocks["up_block_types"][2:],
  )


def decode_section(sizes: Sizes, keep: dict) -> list[dict]:
  from vdae.autoencoders.vdae import VDAE

  rows = []
  for dtype, (cfg, ctx, state, state2) in keep.items():
    ae = VDAE(cfg, state.ema_params, state2.ema_params, ctx.mesh, ctx.image_shape)
    n = sizes.decode_batch
    z = np.asarray(jax.random.normal(jax.random.key(1), (n, cfg.encoder.latent_dim)))
    steps = 30 if not sizes.shrink else 2
    call = lambda ae=ae, z=z, steps=steps: ae.decode(
      z, jax.random.key(2), method="dpmpp_2m_sde", num_steps=steps
    )
    sec = timings.median_time(call, max(2, sizes.repeats // 4), warmup=1)  # compile excluded
    rows.append(
      {
        "what": f"decode {dtype} batch {n}, DPM-Solver++(2M)-SDE {steps} steps",
        "seconds_per_batch": sec,
        "images_per_s": n / sec,
        "value": f"{n / sec:.1f} images/s ({sec:.2f} s a batch of {n})",
      }
    )
  return rows


def run_all_section(sizes: Sizes, tmp: str, npz: str, timeout: float) -> list[dict]:
  wd = os.path.join(tmp, "all")
  s, flags = sizes.run_steps, []
  for stage in stages.STAGES:
    flags += [f"--config.{stage}.num_steps={s}", f"--config.{stage}.checkpoint_every={s}"]
    flags += [f"--config.{stage}.warmup_steps={min(s, 20)}", f"--config.{stage}.log_every={s}"]
  flags += [
    "--config.data.source=npz",
    f"--config.data.path={npz}",
    "--config.data.random_flip=false",
    f"--config.stage1.batch_size={sizes.train_batch}",
    f"--config.stage2.batch_size={sizes.train_batch}",
    f"--config.vae.batch_size={sizes.train_batch}",
    f"--config.refiner.batch_size={sizes.train_batch}",
    f"--config.prior.batch_size={sizes.train_batch}",
    "--config.stage1.image_every=0",
    "--config.stage2.image_every=0",
    "--config.vae.image_every=0",
    f"--config.sampling.num_samples={sizes.decode_batch}",
    "--config.sampling.method=dpmpp_2m_sde",
    "--config.sampling.num_steps=30",
    "--config.prior.sample_method=dpmpp_2m",
    "--config.prior.sample_num_steps=30",
    f"--config.eval.num_test={4 * sizes.decode_batch}",
    f"--config.eval.num_samples={4 * sizes.decode_batch}",
    f"--config.eval.batch_size={sizes.decode_batch}",
    "--config.eval.protocols=('sample','mode')",
    "--config.eval.timing_methods=('',)",
    "--config.eval.bpd_num_images=0",
    "--config.eval.elbo_num_images=0",
    "--config.eval.mode_num_steps=10",
    f"--config.eval.classifier_steps={10 * s}",
    "--config.eval.bootstrap_resamples=100",
  ]
  if sizes.shrink:
    flags += [f"--config.model.{k}={v!r}".replace(" ", "") for k, v in SHRUNK_MODEL.items()]
    flags += [f"--config.encoder.{k}={v!r}".replace(" ", "") for k, v in SHRUNK_ENCODER.items()]
    flags += [
      "--config.vae.decoder_channels=8",
      "--config.vae.decoder_channel_mults=(1,)",
      "--config.refiner.channels=8",
      "--config.refiner.channel_mults=(1,)",
      "--config.prior.width=32",
      "--config.prior.depth=1",
      "--config.eval.classifier_channels=8",
      "--config.eval.classifier_features=8",
      "--config.eval.probe_max_iter=50",
      "--config.sampling.num_steps=2",
      "--config.prior.sample_num_steps=2",
      "--config.refiner.sample_num_steps=2",
      "--config.eval.mode_num_steps=2",
      "--config.eval.mean_decodes=2",
      "--config.model.dtype=float32",
    ]
  argv = [sys.executable, "-m", "vdae.main", "--config=configs/cifar10.py", f"--workdir={wd}"]
  argv += ["--mode=all", *flags]
  log = os.path.join(tmp, "all.log")
  with open(log, "wb") as f:
    try:
      rc = subprocess.run(
        argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout
      ).returncode
    except subprocess.TimeoutExpired:
      rc = None
  if rc != 0:
    with open(log, errors="replace") as f:
      tail = f.read()[-3000:]
    why = f"timed out after {timeout:.0f} s" if rc is None else f"exit status {rc}"
    raise RuntimeError(f"--mode=all: {why}:\n{tail}")
  with open(os.path.join(wd, "timings.json")) as f:
    spent = json.load(f)
  with open(os.path.join(wd, "eval", "metrics.json")) as f:
    metrics = json.load(f)
  phases = ", ".join(f"{k} {v:.0f}" for k, v in spent["seconds"].items())
  return [
    {
      "what": f"--mode=all {sizes.image}x{sizes.image}, {s} steps a stage",
      "seconds": spent["seconds"],
      "total_seconds": spent["total_seconds"],
      "metrics": len(metrics),
      "value": f"{spent['total_seconds']:.0f} s ({phases}); {len(metrics)} metrics",
    }
  ]


# --- the run -----------------------------------------------------------------------------
def run(sizes: Sizes, budget: float) -> dict:
  t_end = time.monotonic() + budget
  out = {"dry": sizes.shrink, "budget_seconds": budget, "sections": {}}
  dev: dict = {}
  keep: dict = {}
  with tempfile.TemporaryDirectory(prefix="vdae_accel_") as tmp:
    npz = common.synthetic_npz((sizes.image,) * 2 + (3,), n=max(256, 4 * sizes.train_batch))
    # The run_all child gets what is left, less a margin for writing the report.
    sections = (
      ("device", lambda: device_section(sizes, dev)),
      ("kernel", lambda: kernel_section(sizes, dev)),
      ("train", lambda: train_section(sizes, dev, tmp, npz, keep)),
      ("imported", lambda: imported_section(sizes, dev, tmp, npz)),
      ("decode", lambda: decode_section(sizes, keep)),
      ("run_all", lambda: run_all_section(sizes, tmp, npz, t_end - time.monotonic() - 5)),
    )
    for name, fn in sections:
      t0 = time.monotonic()
      if t0 > t_end - 5 or (name != "device" and not dev):
        out["sections"][name] = {"status": "skipped", "why": "budget spent or no device figures"}
        continue
      try:
        rows = fn()
        out["sections"][name] = {"status": "ok", "rows": rows}
      except Exception as e:  # noqa: BLE001 - one broken section must not hide the rest
        out["sections"][name] = {
          "status": "failed",
          "error": f"{type(e).__name__}: {e}"[:2000],
          "traceback": traceback.format_exc()[-4000:],
        }
      out["sections"][name]["seconds"] = time.monotonic() - t0
  out["device"] = dev
  return out


def table(report: dict) -> str:
  dev = report["device"]
  kind = "dry run: code paths only, no speed figures" if report["dry"] else "real"
  head = (
    f"accelerator check ({kind}) on {dev.get('backend', '?')}: "
    f"{dev.get('device_count', '?')} x {dev.get('device_kind', '?')}"
  )
  lines = [head, f"{'section':<9} {'case':<52} result"]
  for name, sec in report["sections"].items():
    if sec["status"] != "ok":
      why = sec.get("error", sec.get("why", "")).splitlines()[0]
      lines.append(f"{name:<9} {sec['status'].upper():<52} {why}")
      continue
    for row in sec["rows"]:
      lines.append(f"{name:<9} {row['what']:<52} {row['value']}")
    lines.append(f"{'':<9} {'(section time)':<52} {sec['seconds']:.0f} s")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", help="where to write the report (default: print only)")
  p.add_argument("--budget", type=float, default=450.0, help="seconds for all sections")
  mode = p.add_mutually_exclusive_group()
  mode.add_argument("--dry", action="store_true", default=None, help="CPU-sized code paths")
  mode.add_argument("--real", dest="dry", action="store_false", help="full sizes even on CPU")
  args = p.parse_args(argv)
  if args.budget <= 0:
    p.error(f"--budget={args.budget:g} must be positive (seconds for all sections)")
  if args.json:  # found out now, not after minutes of measuring
    where = os.path.dirname(os.path.abspath(args.json))
    try:
      os.makedirs(where, exist_ok=True)
    except OSError as e:
      p.error(f"--json={args.json}: cannot create {where} ({e.strerror}); pick another path")
    if not os.access(where, os.W_OK) or os.path.isdir(args.json):
      p.error(f"--json={args.json}: cannot write a file there; pick another path")
  dry = jax.default_backend() == "cpu" if args.dry is None else args.dry
  report = run(DRY if dry else REAL, args.budget)
  print(table(report), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=2, default=float)
  failed = [n for n, s in report["sections"].items() if s["status"] != "ok"]
  if failed:
    print(f"accelerator check: {', '.join(failed)} did not pass (see above)", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  runtime.default_cpu_kernels()  # the product's CPU kernels, before a backend starts
  sys.exit(main())
