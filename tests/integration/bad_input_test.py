"""Bad input at the command line: a one-paragraph error naming the problem, a
non-zero exit, no traceback, and nothing a previous run wrote changed.

Each case runs `python -m vdae.main` against a workdir that already holds a
finished stage-1 run (started through launch/local.sh) and checks every file
in it byte for byte afterwards. In-process checks of the same validators are
in tests/unit/data_test.py and tests/integration/train_test.py.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from tests.support import procs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(request, tmp_path_factory) -> str:
  return procs.compile_cache(request, tmp_path_factory)


@pytest.fixture(scope="module")
def trained(cache, tmp_path_factory) -> str:
  """A workdir with a finished 4-step stage-1 run (checkpoints 2 and 4)."""
  wd = str(tmp_path_factory.mktemp("trained") / "wd")
  argv = [
    os.path.join(procs.LAUNCH, "local.sh"),
    "-c",
    "configs/tiny.py",
    "-w",
    wd,
    "--",
    *procs.MINI[1:],
    "--mode=pretrain",
    "--config.stage1.num_steps=4",
    "--config.stage1.checkpoint_every=2",
  ]
  rc, out = procs.run(argv, procs.child_env(cache), wd + ".log", timeout=240)
  assert rc == 0, out[-4000:]
  assert procs.steps(os.path.join(wd, "stage1", "checkpoints")) == [2, 4]
  return wd


def _npz(path, images, **arrays) -> str:
  np.savez(path, images=images, **arrays)
  return str(path)


def _cases(d) -> dict[str, tuple[list[str], str]]:
  """name -> (flags, text the error must contain)."""
  rng = np.random.default_rng(0)
  npz = lambda name, ims: ["--config.data.source=npz", f"--config.data.path={_npz(d / name, ims)}"]
  nan = rng.random((20, 8, 8)).astype(np.float32)
  nan[3, 2, 1] = np.nan
  return {
    "unknown_config_key": (["--config.optim.learning_rate=1e-3"], "learning_rate"),
    "wrong_shape_array": (npz("flat.npz", np.zeros((20, 64), np.uint8)), "expected [N, H, W]"),
    "wrong_dtype": (npz("int64.npz", np.zeros((20, 8, 8), np.int64)), "dtype int64"),
    "nan_pixels": (npz("nan.npz", nan), "non-finite pixel values"),
    "empty_dataset": (npz("empty.npz", np.zeros((0, 8, 8), np.uint8)), "empty"),
    "unknown_factor_kind": (
      [
        "--config.data.source=npz",
        "--config.data.path="
        + _npz(
          d / "factors.npz",
          rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
          factors=np.zeros((20, 1)),
          factor_names=np.array(["size"]),
          factor_kinds=np.array(["angle"]),
        ),
      ],
      "unknown factor kind 'angle'",
    ),
    # Well-formed images, but not those the checkpoints in the workdir were trained on.
    "images_unlike_the_checkpoint": (
      npz("rgb.npz", rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)),
      "trained on images of shape [8, 8, 1]",
    ),
    "resume_with_another_model": (["--config.model.channels=16"], "model.channels"),
    "batch_not_divisible": (["--config.stage1.batch_size=6"], "not divisible by the 4 devices"),
    "mesh_unlike_the_devices": (["--config.mesh.data=3"], "does not fit the 4 available"),
    "mesh_too_small": (["--config.mesh.data=1", "--config.mesh.fsdp=2"], "but 4 are available"),
    # Degenerate sizes: named with the minimum and the fields that set it.
    "images_too_small": (
      npz("one_pixel.npz", rng.integers(0, 256, (20, 1, 1), dtype=np.uint8))
      + ["--config.model.channel_mults=(1,2)"],
      # (ml_collections joins this to MINI's earlier (1,) override: (1, 1, 2), 3 levels)
      "images of 1x1 are too small for the score U-Net: model.channel_mults=(1, 1, 2) has 3 "
      "levels, so each side must be at least 4",
    ),
    "vae_cannot_reproduce": (
      npz("seven.npz", rng.integers(0, 256, (20, 7, 7), dtype=np.uint8)) + ["--mode=train_vae"],
      "cannot be reproduced by the VAE decoder",
    ),
    "unknown_field": (
      ["--config.stage2.beta=0.1"],
      'a --config.* flag names a field the config does not have: "beta"',
    ),
    "bad_config_values": (
      ["--config.sampling.method=dpm", "--config.model.temb_dim=15"],
      "sampling.method='dpm' is not one of em, pc, ode, heun, dpmpp_2m, dpmpp_2m_sde; "
      "model.temb_dim=15 must be even",
    ),
  }


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
  "case",
  [
    "unknown_config_key",
    "wrong_shape_array",
    "wrong_dtype",
    "nan_pixels",
    "empty_dataset",
    "unknown_factor_kind",
    "images_unlike_the_checkpoint",
    "resume_with_another_model",
    "batch_not_divisible",
    "mesh_unlike_the_devices",
    "mesh_too_small",
    "images_too_small",
    "vae_cannot_reproduce",
    "unknown_field",
    "bad_config_values",
  ],
)
def test_bad_input_is_named_and_changes_nothing(case, cache, trained, tmp_path):
  flags, needle = _cases(tmp_path)[case]
  before = procs.snapshot(trained)
  argv = [
    sys.executable,
    "-m",
    "vdae.main",
    *procs.MINI,
    f"--workdir={trained}",
    "--mode=pretrain",
    "--config.stage1.num_steps=8",
    *flags,
  ]
  rc, out = procs.run(argv, procs.child_env(cache), str(tmp_path / "log.txt"), timeout=100)
  assert rc == 2, out[-3000:]
  assert "vdae: error: " in out and needle in out, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  assert procs.snapshot(trained) == before  # nothing written, nothing lost


@pytest.mark.timeout(120)
def test_unwritable_workdir(cache, tmp_path):
  """A workdir below a regular file cannot be created (chmod would not stop root)."""
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  argv = [
    sys.executable,
    "-m",
    "vdae.main",
    *procs.MINI,
    f"--workdir={blocker}/run",
    "--mode=pretrain",
  ]
  rc, out = procs.run(argv, procs.child_env(cache), str(tmp_path / "log.txt"), timeout=100)
  assert rc == 2, out[-3000:]
  assert f"vdae: error: workdir '{blocker}/run' is not writable" in out, out[-3000:]
  assert "Traceback" not in out
  assert blocker.read_text() == "not a directory"
