"""The `Autoencoder` interface every compared model implements (owned here).

The evaluation harness (vdae/evaluation/harness.py) knows only this: encode a
batch of images to codes, decode codes back (with a key: a decoder may be
stochastic), the posterior q(z | x) it encodes with, and the rate. A new
autoencoder is one class implementing it plus one entry in
`autoencoders/registry.py`.

Every method takes and returns numpy arrays with a leading batch axis (on
every process: multi-process results are gathered) and is called with
batches of one fixed size, so each compiles once.
"""

from __future__ import annotations

import abc

import jax
import numpy as np

from vdae.latent.correction import kl_standard_normal


class Autoencoder(abc.ABC):
  """encode(x) -> z, decode(z, key) -> x, rate(x) -> nats per image."""

  name: str  # metric prefix: "<name>/recon_mse"
  latent_dim: int

  @abc.abstractmethod
  def posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [B, H, W, C] in [-1, 1] -> (mu, log_var) [B, L] of q(z | x)."""

  @abc.abstractmethod
  def decode(self, z: np.ndarray, key: jax.Array) -> np.ndarray:
    """z [B, L] -> x [B, H, W, C]: the model's decode protocol (one draw if stochastic)."""

  def encode(self, x: np.ndarray) -> np.ndarray:
    """x [B, H, W, C] -> the code [B, L]: the posterior mean."""
    return self.posterior(x)[0]

  def rate(self, x: np.ndarray) -> np.ndarray:
    """KL(q(z | x) || N(0, I)) per image [B], in nats."""
    mu, log_var = self.posterior(x)
    return np.asarray(kl_standard_normal(mu, log_var))

  def compile_decode(self, z: np.ndarray) -> None:
    """Compiles `decode` for batches shaped like z (keeps compile time out of timings)."""
    self.decode(z, jax.random.key(0))

  def extra_metrics(self, test_images: np.ndarray, batch: int, seed: int) -> dict[str, float]:
    """Metrics only this kind of model has (unprefixed; the harness adds `<name>/`)."""
    del test_images, batch, seed
    return {}
