"""Evaluation: Fréchet distance, the evaluation classifier, the linear probe, and
--mode=evaluate end to end on the tiny config (stage 1, stage 2 and the VAE
trained for a few steps in a module-scoped workdir)."""

import json
import os

import numpy as np
import pytest
import scipy.linalg

from vdae import classifier, data, evaluate, fid


# --- Fréchet distance --------------------------------------------------------------
def _features(n=2000, f=16, seed=0, sample_seed=None):
  """n draws [n, f] of a correlated Gaussian fixed by `seed` (draws by `sample_seed`)."""
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(f, f)) / np.sqrt(f)
  mean = rng.normal(size=f)
  if sample_seed is not None:
    rng = np.random.default_rng(sample_seed)
  return rng.normal(size=(n, f)) @ a + mean


@pytest.mark.timeout(30)
def test_fid_is_zero_for_identical_sets_and_grows_with_shift():
  x = _features()
  assert fid.fid_from_features(x, x) < 1e-3
  shifts = [0.1, 0.5, 1.0, 2.0]
  d = [fid.fid_from_features(x, x + s) for s in shifts]
  assert all(b > a for a, b in zip(d, d[1:], strict=False))
  # A pure translation leaves the covariances equal: d^2 = ||shift||^2 = F s^2.
  np.testing.assert_allclose(d, [16 * s**2 for s in shifts], rtol=1e-6)
  # Two samples of one distribution are close; a rescaled distribution is far.
  same = fid.fid_from_features(x, _features(sample_seed=7))
  assert same < 0.2
  assert fid.fid_from_features(x, 1.5 * _features(sample_seed=7)) > 10 * same


@pytest.mark.timeout(30)
def test_fid_matches_the_sqrtm_formula():
  x, y = _features(500, 8, 0), 1.3 * _features(500, 8, 1)[:, ::-1] + 0.2
  mx, cx = fid.feature_stats(x)
  my, cy = fid.feature_stats(y)
  covmean = scipy.linalg.sqrtm(cx @ cy).real
  ref = np.sum((mx - my) ** 2) + np.trace(cx + cy - 2 * covmean)
  np.testing.assert_allclose(fid.frechet_distance(mx, cx, my, cy), ref, rtol=1e-6)


# --- classifier and probe ------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
  """Trained once on the digits train split with the default eval settings."""
  from configs import digits

  config = digits.get_config()
  workdir = str(tmp_path_factory.mktemp("clf"))
  splits = data.load_splits(config.data)
  model, params, meta = classifier.load_or_train(config, workdir, splits)
  return config, workdir, splits, model, params, meta


@pytest.mark.timeout(120)
def test_classifier_reaches_95_percent_on_digits(digits_classifier):
  _, _, splits, model, params, meta = digits_classifier
  test = splits["test"].arrays()
  logits, feats = classifier.make_predict(model, params)(test["image"])
  acc = float(np.mean(logits.argmax(-1) == test["label"]))
  assert acc >= 0.95
  assert acc == pytest.approx(meta["test_accuracy"])
  assert feats.shape == (len(test["image"]), meta["features"])


@pytest.mark.timeout(60)
def test_classifier_is_cached_and_reused(digits_classifier):
  config, workdir, splits, model, params, _ = digits_classifier
  assert os.path.exists(os.path.join(workdir, "classifier", "params.npz"))
  _, again, _ = classifier.load_or_train(config, workdir, splits)  # no retraining
  x = splits["test"].arrays(8)["image"]
  np.testing.assert_allclose(
    classifier.make_predict(model, again)(x)[0],
    classifier.make_predict(model, params)(x)[0],
    rtol=1e-6,
  )


@pytest.mark.timeout(30)
def test_linear_probe_separates_separable_codes():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 300)
  z = rng.normal(size=(300, 4)) * 0.1 + np.eye(4)[y] * 3
  assert evaluate.linear_probe(z[:200], y[:200], z[200:], y[200:], 200) == 1.0
  noise = rng.normal(size=(300, 4))
  assert evaluate.linear_probe(noise[:200], y[:200], noise[200:], y[200:], 200) < 0.6


@pytest.mark.timeout(30)
def test_unlabelled_data_gets_label_free_metrics(tiny_config):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (40, 8, 8)).astype(np.uint8)
  splits = data._in_memory_splits(images, None, 0.25, "test")
  judge = evaluate.Judge(tiny_config, "/nonexistent", splits)
  x = splits["test"].arrays()["image"]
  assert judge.metrics == {}
  assert set(judge.recon(x, x, None)) == {"recon_mse", "recon_psnr"}
  assert judge.samples(x) == {} and judge.probe(lambda v: v, splits) == {}


def test_psnr_and_levels(tiny_config):
  x = np.zeros((2, 4))
  np.testing.assert_allclose(evaluate.psnr(x, x + 0.02), 10 * np.log10(4 / 4e-4))
  assert evaluate.data_levels(tiny_config) == 17


# --- end to end ---------------------------------------------------------------------------
VDAE_KEYS = {
  "recon_mse",
  "recon_psnr",
  "recon_class_accuracy",
  "linear_probe_accuracy",
  "sample_fid",
  "recon_fid",
  "bits_per_dim",
  "bpd_solver_steps",
  "time_per_image_em",
  "time_per_image_pc",
  "time_per_image_ode",
  "classifier_test_accuracy",
  "fid_train_vs_test",
}
VAE_KEYS = {
  f"vae/{k}"
  for k in (
    "recon_mse",
    "recon_psnr",
    "recon_class_accuracy",
    "recon_fid",
    "sample_fid",
    "linear_probe_accuracy",
    "neg_elbo_bits_per_dim",
    "time_per_image",
  )
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """Stage 1, stage 2 and the VAE on the tiny config, then --mode=evaluate."""
  from configs import tiny
  from vdae import train, train_encoder, vae

  config = tiny.get_config()
  workdir = str(tmp_path_factory.mktemp("tiny_eval"))
  train.pretrain(config, workdir)
  train_encoder.train_encoder(config, workdir)
  vae.train_vae(config, workdir)
  return config, workdir, evaluate.evaluate(config, workdir)


@pytest.mark.timeout(240)
def test_evaluate_writes_every_metric(tiny_run):
  _, workdir, metrics = tiny_run
  assert set(metrics) == VDAE_KEYS | VAE_KEYS
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    written = json.load(f)
  assert written == pytest.approx(metrics)
  assert all(isinstance(v, float) and np.isfinite(v) for v in written.values()), written
  for k in ("recon_class_accuracy", "linear_probe_accuracy", "vae/recon_class_accuracy"):
    assert 0.0 <= written[k] <= 1.0
  assert written["bits_per_dim"] > 0 and written["sample_fid"] >= 0
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
  from vdae import sharding, vae
  from vdae.errors import CheckpointError

  config, workdir, _ = tiny_run
  other = config.copy_and_resolve_references()
  other.vae.decoder_channels = 16
  with pytest.raises(CheckpointError, match="vae.decoder_channels"):
    vae.load_vae(other, workdir, (8, 8, 1), sharding.make_mesh(other.mesh))
