"""--mode=evaluate end to end on the tiny config: every stage of the table trained for a
few steps in a module-scoped workdir, then the harness over every autoencoder."""

import json
import os

import numpy as np
import pytest

from vdae.commands import evaluate
from vdae.training import stages

# Every autoencoder gets the same keys from the one harness.
SHARED = (
  "recon_mse",
  "recon_psnr",
  "rate",
  "recon_class_accuracy",
  "recon_fid",
  "sample_fid",
  "linear_probe_accuracy",
  "time_per_image",
)
KEYS = (
  {f"{ae}/{k}" for ae in ("vdae", "vae") for k in SHARED}
  | {"vdae/time_per_image_em", "vdae/time_per_image_ode", "vae/neg_elbo_bits_per_dim"}
  | {"score_model/bits_per_dim", "score_model/bpd_solver_steps"}
  | {"classifier_test_accuracy", "fid_train_vs_test"}
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """Stage 1, stage 2 and the VAE on the tiny config, then --mode=evaluate."""
  from configs import tiny

  config = tiny.get_config()
  # One level, no attention (procs.MINI's shape): cheaper to compile, same code paths.
  config.model.channel_mults = config.encoder.channel_mults = (1,)
  config.model.num_res_blocks, config.model.attn_resolutions = 1, ()
  workdir = str(tmp_path_factory.mktemp("tiny_eval"))
  for name in stages.STAGES:
    stages.train(name, config, workdir)
  return config, workdir, evaluate.evaluate(config, workdir)


@pytest.mark.timeout(240)
def test_evaluate_writes_every_metric(tiny_run):
  _, workdir, metrics = tiny_run
  assert set(metrics) == KEYS
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    written = json.load(f)
  assert written == pytest.approx(metrics)
  assert all(isinstance(v, float) and np.isfinite(v) for v in written.values()), written
  for ae in ("vdae", "vae"):
    for k in ("recon_class_accuracy", "linear_probe_accuracy"):
      assert 0.0 <= written[f"{ae}/{k}"] <= 1.0
    assert written[f"{ae}/rate"] > 0 and written[f"{ae}/sample_fid"] >= 0
  assert written["score_model/bits_per_dim"] > 0
  for png in ("comparison", "vdae_reconstructions", "vdae_samples", "vae_samples", "loss_curves"):
    assert os.path.exists(os.path.join(workdir, "eval", f"{png}.png")), png
  events = os.listdir(os.path.join(workdir, "tensorboard", "eval"))
  assert any(e.startswith("events.out.tfevents") for e in events)


@pytest.mark.timeout(60)
def test_evaluate_event_file_has_eval_scalars(tiny_run):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  _, workdir, metrics = tiny_run
  acc = EventAccumulator(os.path.join(workdir, "tensorboard", "eval"))
  acc.Reload()
  tags = set(acc.Tags()["scalars"])
  assert {f"eval/{k}" for k in metrics} <= tags


@pytest.mark.timeout(60)
def test_vae_checkpoint_with_another_decoder_fails_clearly(tiny_run):
  from vdae.io.errors import CheckpointError
  from vdae.parallel import sharding

  config, workdir, _ = tiny_run
  other = config.copy_and_resolve_references()
  other.vae.decoder_channels = 16
  with pytest.raises(CheckpointError, match="vae.decoder_channels"):
    stages.load_stage("vae", other, workdir, sharding.make_mesh(other.mesh), (8, 8, 1))
