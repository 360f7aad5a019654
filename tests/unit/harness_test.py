"""The harness on an autoencoder whose metrics are known in closed form."""

import numpy as np
import pytest

from vdae.autoencoders.base import Autoencoder
from vdae.data import sources
from vdae.evaluation import harness

pytestmark = pytest.mark.timeout(60)


class Shrink(Autoencoder):
  """z = x (flattened), q(z | x) = N(x, v I); decode(z) = a z. So recon error is
  (1 - a) x exactly and the rate is 1/2 sum(x^2 + v - 1 - log v)."""

  name = "shrink"

  def __init__(self, d: int, a: float, v: float):
    self.latent_dim, self.a, self.v, self.calls = d, a, v, []

  def posterior(self, x):
    mu = x.reshape(len(x), -1)
    return mu, np.full_like(mu, np.log(self.v))

  def decode(self, z, key):
    self.calls.append(len(z))
    return (self.a * z).reshape(len(z), 8, 8, 1)

  def extra_metrics(self, test_images, batch, seed):
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
  assert m["shrink/recon_mse"] == pytest.approx(float(np.mean((0.5 * x) ** 2)), rel=1e-6)
  flat = x.reshape(10, -1).astype(np.float64)
  rate = 0.5 * np.sum(flat**2 + 0.25 - 1 - np.log(0.25), -1).mean()
  assert m["shrink/rate"] == pytest.approx(rate, rel=1e-5)
  assert m["shrink/seen"] == 10.0
  assert set(m) == {
    "shrink/recon_mse",
    "shrink/recon_psnr",
    "shrink/rate",
    "shrink/time_per_image",
    "shrink/seen",
  }
  assert res.reconstructions.shape == (10, 8, 8, 1) and res.samples.shape == (6, 8, 8, 1)
  # Every decode call is one full batch (padded): one compile per shape.
  assert set(ae.calls) == {4}
