"""The `Autoencoder` interface every compared model implements.

The evaluation harness (vdae/evaluation/harness.py) knows only this: encode a
batch of images to codes, decode codes back under a named protocol (`sample`:
one stochastic decode, with a key; `mode`: the deterministic one), the
posterior q(z | x) it encodes with, and the rate. A new
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

PROTOCOLS = ("sample", "mode")  # what decode takes; the harness adds "mean"


def with_method(sampling, method: str, num_steps: int | None = None):
  """A copy of the `sampling` group whose method is `method` (and num_steps, if given)."""
  cfg = sampling.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.method = method
    if num_steps is not None:
      cfg.num_steps = num_steps
  return cfg


def check_protocol(protocol: str) -> str:
  if protocol not in PROTOCOLS:
    raise ValueError(f"decode protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
  return protocol


class Autoencoder(abc.ABC):
  """encode(x) -> z, decode(z, key, protocol) -> x, rate(x) -> nats per image."""

  name: str  # metric prefix: "<name>/<protocol>/l2"
  latent_dim: int
  # True when decode(z, key, "mode") is E[x | z] itself (a Gaussian decoder's
  # mean): the harness's `mean` protocol then uses it instead of averaging draws.
  exact_mean: bool = False
  # True when the model can also encode x's decoding noise (`reconstruct_inverted`):
  # the harness's `inverted` protocol; others skip it.
  invertible: bool = False

  @abc.abstractmethod
  def posterior(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [B, H, W, C] in [-1, 1] -> (mu, log_var) [B, L] of q(z | x)."""

  @abc.abstractmethod
  def decode(self, z: np.ndarray, key: jax.Array, protocol: str = "sample") -> np.ndarray:
    """z [B, L] -> x [B, H, W, C]: one draw of p(x | z) ("sample") or the
    deterministic decode ("mode")."""

  def encode(self, x: np.ndarray) -> np.ndarray:
    """x [B, H, W, C] -> the code [B, L]: the posterior mean."""
    return self.posterior(x)[0]

  def rate(self, x: np.ndarray) -> np.ndarray:
    """KL(q(z | x) || N(0, I)) per image [B], in nats."""
    mu, log_var = self.posterior(x)
    return np.asarray(kl_standard_normal(mu, log_var))

  # True when prior_sample draws from a learned prior rather than N(0, I): the
  # harness then also reports sample_fid_standard_normal.
  learned_prior: bool = False

  def prior_sample(self, n: int, key: jax.Array, standard_normal: bool = False) -> np.ndarray:
    """n codes [n, L] from the model's prior (N(0, I) unless it learned one)."""
    del standard_normal
    return np.asarray(jax.random.normal(key, (n, self.latent_dim)))

  def reconstruct_inverted(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """x [B, ...] and its code z [B, L] -> x decoded from z and x's own encoded
    noise (the `inverted` protocol; deterministic). Only where `invertible`."""
    raise NotImplementedError(f"{self.name} has no inversion")

  def compile_decode(self, z: np.ndarray, protocol: str = "sample") -> None:
    """Compiles the decode `protocol` uses for batches shaped like z (keeps compile
    time out of timings); "mean" averages "sample" decodes."""
    self.decode(z, jax.random.key(0), "mode" if protocol == "mode" else "sample")

  def extra_metrics(
    self, test_images: np.ndarray, batch: int, seed: int, hooks=None
  ) -> dict[str, float]:
    """Metrics only this kind of model has (unprefixed; the harness adds `<name>/`).
    hooks: a likelihood.BatchHooks for what is solved in pieces (kept parts, progress,
    preemption)."""
    del test_images, batch, seed, hooks
    return {}
