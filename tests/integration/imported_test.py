"""A score model vdae did not train: the digits DDPM of tests/fixtures/diffusers (trained
by diffusers' scheduler and a plain PyTorch loop, saved in float16) as the score-model
stage, through the command line.

`--mode=all` skips pretraining and runs every other stage and the evaluation on it;
bad input (a directory without the weights, a cross-attention block, weights that
do not fit the config, data of another shape, a resume against other weights) is
one `vdae: error:` line and changes nothing.
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

DDPM = os.path.join(procs.ROOT, "tests", "fixtures", "diffusers", "digits_ddpm")
IMPORT = ["--config.model.source=diffusers", f"--config.model.path={DDPM}"]


@pytest.fixture(scope="module")
def cache(request, tmp_path_factory) -> str:
  return procs.compile_cache(request, tmp_path_factory)


def _vdae(wd, *flags, cache, log, timeout=400):
  argv = [sys.executable, "-m", "vdae.main", "--config=configs/tiny.py", f"--workdir={wd}"]
  return procs.run([*argv, *flags], procs.child_env(cache), log, timeout=timeout)


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory) -> str:
  """A workdir where --mode=all ran on the imported DDPM."""
  wd = str(tmp_path_factory.mktemp("imported") / "wd")
  rc, out = _vdae(wd, *IMPORT, "--mode=all", cache=cache, log=wd + ".log", timeout=600)
  assert rc == 0, out[-4000:]
  return wd


@pytest.mark.timeout(660)
def test_all_runs_every_stage_but_pretraining_on_the_imported_model(finished):
  assert not os.path.exists(os.path.join(finished, "stage1"))  # nothing pretrained
  for stage in ("stage2", "prior", "vae"):
    assert procs.steps(os.path.join(finished, stage, "checkpoints")), stage
  with open(os.path.join(finished, "eval", "metrics.json")) as f:
    metrics = json.load(f)
  assert np.isfinite(metrics["vdae/sample/l2"]), metrics
  assert np.isfinite(metrics["score_model/bits_per_dim"]), metrics  # the imported model's
  ckpt = os.path.join(finished, "stage2", "checkpoints")
  step = max(procs.steps(ckpt))
  with open(os.path.join(ckpt, str(step), "meta", "metadata")) as f:
    meta = json.load(f)
  assert meta["score_params"] == "imported" and len(meta["score_sha256"]) == 64, meta
  assert meta["score_source"] == f"diffusers:{DDPM}"


def _other_weights(tmp_path) -> str:
  """A copy of the DDPM with one tensor changed (same architecture, other weights)."""
  from safetensors.numpy import load_file, save_file

  d = tmp_path / "other_ddpm"
  shutil.copytree(DDPM, d)
  w = d / "unet" / "diffusion_pytorch_model.safetensors"
  tensors = load_file(str(w))
  name = sorted(tensors)[0]
  tensors[name] = tensors[name] + np.ones_like(tensors[name])
  save_file(tensors, str(w))
  return str(d)


def _cases(tmp_path) -> dict[str, tuple[list[str], str]]:
  no_weights = tmp_path / "no_weights"
  shutil.copytree(DDPM, no_weights)
  os.remove(no_weights / "unet" / "diffusion_pytorch_model.safetensors")
  cross = tmp_path / "cross"
  shutil.copytree(DDPM, cross)
  cfg = json.loads((cross / "unet" / "config.json").read_text())
  cfg["down_block_types"][1] = "CrossAttnDownBlock2D"
  (cross / "unet" / "config.json").write_text(json.dumps(cfg))
  wide = tmp_path / "wide"
  shutil.copytree(DDPM, wide)
  cfg = json.loads((wide / "unet" / "config.json").read_text())
  cfg["block_out_channels"] = [2 * c for c in cfg["block_out_channels"]]
  (wide / "unet" / "config.json").write_text(json.dumps(cfg))
  rgb = tmp_path / "rgb.npz"
  np.savez(rgb, images=np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8))
  path = lambda p: ["--config.model.source=diffusers", f"--config.model.path={p}"]
  return {
    "no_weights": (path(no_weights), "no diffusion_pytorch_model.safetensors"),
    "cross_attention": (path(cross), "down_block_types[1]='CrossAttnDownBlock2D'"),
    "weights_unlike_config": (path(wide), "the weights do not match config.json"),
    "data_unlike_model": (
      [*IMPORT, "--config.data.source=npz", f"--config.data.path={rgb}"],
      "takes 8x8 images with 1 channels",
    ),
    "resume_other_weights": (path(_other_weights(tmp_path)), "the encoder was trained against"),
  }


@pytest.mark.timeout(660)
@pytest.mark.parametrize(
  "case",
  [
    "no_weights",
    "cross_attention",
    "weights_unlike_config",
    "data_unlike_model",
    "resume_other_weights",
  ],
)
def test_bad_imports_are_named_and_change_nothing(case, finished, cache, tmp_path):
  flags, needle = _cases(tmp_path)[case]
  before = procs.snapshot(finished)
  rc, out = _vdae(
    finished,
    *flags,
    "--mode=train_encoder",
    "--config.stage2.num_steps=8",
    cache=cache,
    log=str(tmp_path / "log.txt"),
    timeout=200,
  )
  assert rc == 2, out[-3000:]
  assert "vdae: error: " in out and needle in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  assert procs.snapshot(finished) == before
