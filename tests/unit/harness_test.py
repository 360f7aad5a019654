"""The harness on an autoencoder whose metrics are known in closed form."""

import jax
import numpy as np
import pytest

from vdae.autoencoders.base import Autoencoder
from vdae.data import sources
from vdae.evaluation import harness

pytestmark = pytest.mark.timeout(60)


class Shrink(Autoencoder):
  """z = x (flattened), q(z | x) = N(x, v I); decode(z) = a z (+ noise n for the
  `sample` protocol). So the `mode` recon error is (1 - a) x exactly and the rate
  is 1/2 sum(x^2 + v - 1 - log v)."""

  name = "shrink"

  def __init__(self, d: int, a: float, v: float, noise: float = 0.0):
    self.latent_dim, self.a, self.v, self.noise, self.calls = d, a, v, noise, []

  def posterior(self, x):
    mu = x.reshape(len(x), -1)
    return mu, np.full_like(mu, np.log(self.v))

  def decode(self, z, key, protocol="sample"):
    self.calls.append(len(z))
    noise = 0.0 if protocol == "mode" else self.noise * np.asarray(jax.random.normal(key, z.shape))
    return (self.a * z + noise).reshape(len(z), 8, 8, 1)

  def extra_metrics(self, test_images, batch, seed, hooks=None):
    return {"seen": float(len(test_images))}


def test_harness_metrics_of_an_analytic_autoencoder(tiny_config):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 8, 8)).astype(np.uint8)
  splits = sources._in_memory_splits(images, None, 0.25, "test")
  c = tiny_config
  c.eval.num_test, c.eval.batch_size, c.eval.num_samples = 10, 4, 6
  judge = harness.Judge(c, "/nonexistent", splits)  # no labels: no classifier
  ae = Shrink(64, a=0.5, v=0.25)
  res = harness.evaluate_autoencoder(ae, c, judge, splits)
  x = splits["test"].arrays(10)["image"]
  m = res.metrics
  err = (0.5 * x).reshape(10, -1).astype(np.float64)
  for p in ("sample", "mode", "mean"):  # noise 0: every protocol is a z exactly
    assert m[f"shrink/{p}/mse"] == pytest.approx(float(np.mean((0.5 * err) ** 2)), rel=1e-6)
    l2 = np.mean(np.linalg.norm(0.5 * err, axis=-1))
    assert m[f"shrink/{p}/l2"] == pytest.approx(l2, rel=1e-6)
    assert m[f"shrink/{p}/l2_ci_low"] <= l2 <= m[f"shrink/{p}/l2_ci_high"]
  flat = x.reshape(10, -1).astype(np.float64)
  rate = 0.5 * np.sum(flat**2 + 0.25 - 1 - np.log(0.25), -1).mean()
  assert m["shrink/rate_nats"] == pytest.approx(rate, rel=1e-5)
  assert m["shrink/seen"] == 10.0
  per_protocol = ("l2", "l2_ci_low", "l2_ci_high", "mse", "psnr", "time_per_image")
  assert set(m) == {
    *(f"shrink/{p}/{k}" for p in ("sample", "mode", "mean") for k in per_protocol),
    "shrink/rate_nats",
    "shrink/seen",
  }
  assert set(res.reconstructions) == {"sample", "mode", "mean"}
  assert res.reconstructions["mode"].shape == (10, 8, 8, 1) and res.samples.shape == (6, 8, 8, 1)
  # Every decode call is one full batch (padded): one compile per shape.
  assert set(ae.calls) == {4}


def test_the_mean_protocol_averages_draws_and_the_sample_one_pays_their_variance(tiny_config):
  """With decode = z + noise n (n ~ N(0, s^2)): sample MSE = mode MSE + s^2, and the
  mean of K draws cuts the excess to s^2 / K."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 8, 8)).astype(np.uint8)
  splits = sources._in_memory_splits(images, None, 0.25, "test")
  c = tiny_config
  c.eval.num_test, c.eval.batch_size, c.eval.num_samples, c.eval.mean_decodes = 15, 5, 5, 4
  c.eval.bootstrap_resamples = 0
  judge = harness.Judge(c, "/nonexistent", splits)
  m = harness.evaluate_autoencoder(Shrink(64, a=1.0, v=0.25, noise=0.2), c, judge, splits).metrics
  s2 = 0.25 * 0.2**2  # mse is on [0, 1] images: half the [-1, 1] error, squared
  assert m["shrink/mode/mse"] == pytest.approx(0.0, abs=1e-9)
  assert m["shrink/sample/mse"] == pytest.approx(s2, rel=0.1)
  assert m["shrink/mean/mse"] == pytest.approx(s2 / 4, rel=0.15)
  assert "shrink/mode/l2_ci_low" not in m  # bootstrap_resamples = 0: no intervals


class Invertible(Shrink):
  """Shrink whose `inverted` protocol is exact: x_1 is x itself and decoding from it
  gives x back, whatever z is (a perfect Diff-AE inversion)."""

  invertible = True

  def reconstruct_inverted(self, x, z):
    return np.asarray(x)

  def compile_decode(self, z, protocol="sample", method=None):
    pass


def test_the_inverted_protocol_reconstructs_the_test_images_not_another_decode(tiny_config):
  """Run after sample / mode / mean (the configured order), `inverted` must invert the
  test images: an exact inversion has zero error while the other protocols keep theirs."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 8, 8)).astype(np.uint8)
  splits = sources._in_memory_splits(images, None, 0.25, "test")
  c = tiny_config
  c.eval.num_test, c.eval.batch_size, c.eval.num_samples, c.eval.mean_decodes = 10, 4, 4, 2
  c.eval.bootstrap_resamples = 0
  assert tuple(c.eval.protocols)[-1] == "inverted"
  judge = harness.Judge(c, "/nonexistent", splits)
  m = harness.evaluate_autoencoder(Invertible(64, a=0.5, v=0.25), c, judge, splits).metrics
  assert m["shrink/inverted/mse"] == pytest.approx(0.0, abs=1e-12)
  assert m["shrink/mean/mse"] > 0.01


def test_an_unconverged_solve_is_one_warning_naming_the_budget(caplog):
  harness.warn_unconverged("vdae/neg_elbo_bits_per_dim", {"k_converged": 1.0}, "k")
  assert not caplog.records
  harness.warn_unconverged("vdae/neg_elbo_bits_per_dim", {"k_converged": 0.25}, "k")
  (record,) = caplog.records
  said = record.getMessage()
  assert record.levelname == "WARNING" and "\n" not in said
  assert "75% of the images" in said and "eval.bpd_max_steps" in said and "eval.bpd_rtol" in said
