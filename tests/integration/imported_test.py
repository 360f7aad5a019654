"""A score model vdae did not train, at the command line.

`--mode=all` with `model.source=diffusers` on the DDPM that diffusers' own
scheduler trained on the digits (tests/fixtures/diffusers/digits_ddpm): no
stage 1 is trained, the encoder trains against the imported weights, and the
evaluation runs on them. Then the bad input an imported model adds, each a
one-line `vdae: error:`, exit 2, no traceback, and nothing in the workdir
changed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest

from tests.support import procs

pytestmark = pytest.mark.slow

FIXTURE = os.path.join(procs.ROOT, "tests", "fixtures", "diffusers", "digits_ddpm")
# The tiny config's encoder and other stages, made cheap to compile (procs.MINI minus the
# native U-Net's fields, which an imported model does not read), on the imported DDPM.
IMPORTED = (
  "--config=configs/tiny.py",
  "--config.encoder.channel_mults=(1,)",
  "--config.encoder.num_res_blocks=1",
  "--config.optim.schedule=constant",
  "--config.model.source=diffusers",
  # Two decode protocols and no timing decodes: these tests check the import's wiring
  # (evaluate_test.py checks every protocol and key on the native model).
  "--config.eval.protocols=('sample','mode')",
  "--config.eval.timing_methods=('',)",
  "--config.eval.classifier_steps=30",
  "--config.eval.probe_max_iter=50",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
  """This module's own compilation cache: the compiles-nothing test counts its entries,
  which another pytest-xdist worker's runs would add to in a shared one."""
  return str(tmp_path_factory.mktemp("xla_cache"))


def _main(*flags: str) -> list[str]:
  return [sys.executable, "-m", "vdae.main", *IMPORTED, *flags]


@pytest.fixture(scope="module")
def imported_run(cache, tmp_path_factory) -> str:
  wd = str(tmp_path_factory.mktemp("imported") / "wd")
  argv = _main(f"--config.model.path={FIXTURE}", f"--workdir={wd}", "--mode=all")
  # ~230 s beside the other pytest-xdist worker on a 2-core machine: room for one twice as slow.
  rc, out = procs.run(argv, procs.child_env(cache), wd + ".log", timeout=600)
  assert rc == 0, out[-4000:]
  return wd


@pytest.mark.timeout(660)
def test_mode_all_trains_the_encoder_on_the_imported_model(imported_run):
  from vdae.io import pretrained

  wd = imported_run
  assert not os.path.exists(os.path.join(wd, "stage1", "checkpoints")), "stage 1 was trained"
  steps = procs.steps(os.path.join(wd, "stage2", "checkpoints"))
  assert steps and steps[-1] == 4, steps
  with open(os.path.join(wd, "stage2", "checkpoints", "4", "meta", "metadata")) as f:
    meta = json.load(f)
  # Resuming or decoding against other weights is refused by this hash (below).
  assert meta["score_sha256"] == pretrained.weights_sha256(FIXTURE), meta
  with open(os.path.join(wd, "eval", "metrics.json")) as f:
    metrics = json.load(f)
  for key in ("vdae/sample/l2", "vdae/mode/l2", "vdae/rate_nats", "vae/sample/l2"):
    assert np.isfinite(metrics[key]), (key, metrics[key])
  # --mode=all ends with where the time went, beside the machine's measured peak.
  with open(os.path.join(wd, "timings.json")) as f:
    spent = json.load(f)
  from vdae.training import stages

  assert set(spent["seconds"]) == {"setup", *stages.STAGES, "pictures", "evaluate"}
  assert spent["total_seconds"] == pytest.approx(sum(spent["seconds"].values()))
  assert spent["matmul_peak_gflops"] > 0
  # The imported DDPM is a real digits model: its likelihood is far below the
  # 8 bits/dim of uniform noise (a wrong timestep scale or eps conversion is not).
  assert metrics["score_model/bits_per_dim"] < 4.0, metrics["score_model/bits_per_dim"]


@pytest.mark.timeout(300)
def test_a_rerun_of_evaluate_compiles_nothing_new(cache, imported_run, tmp_path):
  """Every program --mode=evaluate needs is in the persistent cache after --mode=all
  (runtime.compile_cache): the rerun adds no entry to it but `jit_stage`, jax's eager
  lifting of a Python constant into an array (one tiny program per value, which the
  product's compile_cache_min_seconds keeps out of the cache anyway)."""
  before = set(os.listdir(cache))
  # Without the kept parts, so that the rerun computes (and compiles) everything again.
  shutil.rmtree(os.path.join(imported_run, "eval", "parts"))
  argv = _main(f"--config.model.path={FIXTURE}", f"--workdir={imported_run}", "--mode=evaluate")
  rc, out = procs.run(argv, procs.child_env(cache), str(tmp_path / "log.txt"), timeout=240)
  assert rc == 0, out[-3000:]
  assert before, "--mode=all wrote nothing to the compilation cache"
  new = set(os.listdir(cache)) - before
  assert {n for n in new if not n.startswith("jit_stage-")} == set()


def _copy(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def _edit_unet_config(d: str, **changes) -> None:
  path = os.path.join(d, "unet", "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg.update(changes)
  with open(path, "w") as f:
    json.dump(cfg, f)


def _other_weights(d: str) -> None:
  """The same architecture with one tensor changed: another model to the hash."""
  from safetensors.numpy import load_file, save_file

  path = os.path.join(d, "unet", "diffusion_pytorch_model.safetensors")
  tensors = load_file(path)
  name = sorted(tensors)[0]
  tensors[name] = (tensors[name] + np.float16(0.01)).astype(tensors[name].dtype)
  save_file(tensors, path)


def _case(name: str, d) -> tuple[str, str, bool]:
  """-> (model.path, text the error must contain, whether it runs in a fresh workdir)."""
  path = _copy(FIXTURE, d / "model")
  if name == "no_weights":
    os.remove(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))
    return path, "no diffusion_pytorch_model.safetensors", False
  if name == "cross_attention_block":
    _edit_unet_config(path, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"])
    return path, "CrossAttnDownBlock2D", False
  if name == "weights_unlike_the_config":
    _edit_unet_config(path, block_out_channels=[32, 64])
    # A fresh workdir: in the trained one the hash check (next case) speaks first.
    return path, "the weights do not match config.json", True
  if name == "image_size_unlike_the_data":
    _edit_unet_config(path, sample_size=16)
    return path, "takes 16x16 images with 1 channels", False
  if name == "resume_against_other_weights":
    _other_weights(path)
    return path, "the encoder was trained against the score model", False
  raise AssertionError(name)


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
  "name",
  [
    "no_weights",
    "cross_attention_block",
    "weights_unlike_the_config",
    "image_size_unlike_the_data",
    "resume_against_other_weights",
  ],
)
def test_bad_imported_models_are_named_and_change_nothing(name, cache, imported_run, tmp_path):
  path, needle, fresh = _case(name, tmp_path)
  wd = str(tmp_path / "fresh") if fresh else imported_run
  before = procs.snapshot(wd) if os.path.exists(wd) else {}
  argv = _main(
    f"--config.model.path={path}",
    f"--workdir={wd}",
    "--mode=train_encoder",
    "--config.stage2.num_steps=8",
  )
  rc, out = procs.run(argv, procs.child_env(cache), str(tmp_path / "log.txt"), timeout=150)
  assert rc == 2, out[-3000:]
  errors = [line for line in out.splitlines() if line.startswith("vdae: error: ")]
  assert len(errors) == 1 and needle in errors[0], out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  after = procs.snapshot(wd) if os.path.exists(wd) else {}
  assert after == before  # nothing written, nothing lost
