"""Encoding and decoding with the conditional score s_theta + c (no decoder net).

Decoding runs the stage-1 samplers with c = grad_x log q(z | x_t, t) added to
the score. Modes write PNG grids and .npz arrays under WORKDIR/<mode>/.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from vdae import data, files, latent, restore, sampling, sharding, train
from vdae import sde as sde_lib
from vdae.models import encoder as encoder_lib

log = logging.getLogger(__name__)


def make_decode_fn(score_model, enc_model, config, shape):
  """f(score_params, enc_params, z [N, L], key, x_init=None) -> x [N, H, W, C]."""
  lv = config.encoder.logvar_term

  def make_fns(args):
    score_params, enc_params, z = args
    eps_fn = train.eps_fn_for(score_model, score_params, config)
    encode_fn = lambda x, t: enc_model.apply({"params": enc_params}, x, t)
    return eps_fn, lambda x, t: latent.correction_score(encode_fn, x, t, z, lv)

  return Decoder(
    sampling.compile_sampler(
      make_fns, config.sampling, sde_lib.from_config(config.sde), train.step_spec(config), shape
    )
  )


class Decoder:
  """decode(score_params, enc_params, z, key, x_init=None) -> x, compiled per shape."""

  def __init__(self, sampler: sampling.CompiledSampler):
    self._sampler = sampler

  def __call__(self, score_params, enc_params, z, key, x_init=None):
    return self._sampler((score_params, enc_params, z), key, x_init)

  def precompile(self, score_params, enc_params, z, key, x_init=None) -> None:
    self._sampler.precompile((score_params, enc_params, z), key, x_init)


def make_encode_fn(enc_model):
  """jit(enc_params, x [N, H, W, C]) -> (mu, log_var) of q(z | x_0, t=0)."""

  def run(enc_params, x):
    return enc_model.apply({"params": enc_params}, x, jnp.zeros((x.shape[0],), jnp.float32))

  return jax.jit(run)


def make_reconstruct_fn(score_model, enc_model, config, shape):
  """jit(score_params, enc_params, x, key) -> decode(mu(x))."""
  dec = make_decode_fn(score_model, enc_model, config, shape)
  enc = make_encode_fn(enc_model)

  def run(score_params, enc_params, x, key):
    mu, _ = enc(enc_params, x)
    return dec(score_params, enc_params, mu, key)

  return run


class Models:
  """The frozen score model and the trained encoder, restored for decoding."""

  def __init__(self, config, workdir: str):
    self.config = config
    self.workdir = workdir
    self.mesh = sharding.make_mesh(config.mesh)
    self.splits = data.load_splits(config.data)
    self.image_shape = tuple(self.splits["train"].image_shape)
    stage1_dir = config.stage2.stage1_workdir or workdir
    self.score_model, self.score_params, _ = train.load_score_model(
      config, stage1_dir, self.mesh, self.image_shape, config.sampling.use_ema
    )
    self.encoder = encoder_lib.from_config(config.encoder, config.model, config.sde)
    self.enc_params = load_encoder(config, workdir, self.encoder, self.image_shape, self.mesh)
    self._encode = make_encode_fn(self.encoder)
    self._decoders = {}

  def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, lv = self._encode(self.enc_params, jnp.asarray(x))
    return sharding.to_host(mu), sharding.to_host(lv)

  def decode(self, z: np.ndarray, seed: int, config=None, x_init=None) -> np.ndarray:
    key = (z.shape, id(config))
    if key not in self._decoders:
      self._decoders[key] = make_decode_fn(
        self.score_model, self.encoder, config or self.config, (z.shape[0], *self.image_shape)
      )
    fn = self._decoders[key]
    x_init = None if x_init is None else jnp.asarray(x_init)
    return sharding.to_host(
      fn(self.score_params, self.enc_params, jnp.asarray(z), jax.random.key(seed), x_init)
    )


def load_encoder(config, workdir, enc_model, image_shape, mesh):
  """Restores the encoder's EMA params from WORKDIR/stage2/checkpoints."""
  dummy = jnp.zeros((1, *image_shape), jnp.float32)
  params, _ = restore.restore_params(
    os.path.join(workdir, "stage2", "checkpoints"),
    lambda key: enc_model.init(key, dummy, jnp.zeros((1,)))["params"],
    config,
    mesh,
    keys=("model", "sde", "encoder"),
    image_shape=image_shape,
    what="encoder",
    run_first="Run --mode=train_encoder first.",
  )
  return params


def _split_arrays(m: Models, limit: int | None = None) -> dict[str, np.ndarray]:
  return m.splits[m.config.stage2.encode_split].arrays(limit)


def encode_mode(config, workdir: str) -> str:
  """WORKDIR/encode/latents.npz: mu, log_var, index (row in the split), labels."""
  m = Models(config, workdir)
  split = m.splits[config.stage2.encode_split]
  mus, lvs, idx, labels = [], [], [], []
  for b in data.eval_batches(split, config.stage2.batch_size):
    mu, lv = m.encode(b["image"])
    v = b["valid"]
    mus.append(mu[v]), lvs.append(lv[v]), idx.append(b["index"][v]), labels.append(b["label"][v])
  out = {"mu": np.concatenate(mus), "log_var": np.concatenate(lvs), "index": np.concatenate(idx)}
  if split.has_labels:
    out["labels"] = np.concatenate(labels)
  path = os.path.join(workdir, "encode", "latents.npz")
  if jax.process_index() == 0:
    files.write_npz(path, **out)
  log.info("encoded %d %s images -> %s", len(out["mu"]), split.name, path)
  return path


def reconstruct_mode(config, workdir: str, n: int = 32) -> str:
  """Originals (odd rows) above their reconstructions (even rows)."""
  m = Models(config, workdir)
  x = _split_arrays(m, n)["image"]
  mu, _ = m.encode(x)
  rec = m.decode(mu, config.seed)
  cols = 8
  rows = []
  for i in range(0, len(x), cols):
    rows += [x[i : i + cols], rec[i : i + cols]]
  path = train.write_images(
    workdir,
    "reconstruct",
    "reconstructions",
    np.concatenate(rows),
    cols=cols,
    originals=x,
    reconstructions=rec,
    mu=mu,
  )
  log.info("reconstructions written to %s", path)
  return path


def sample_mode(config, workdir: str) -> str:
  """z ~ N(0, I), decoded with the conditional score."""
  m = Models(config, workdir)
  n = config.sampling.num_samples
  z = np.asarray(jax.random.normal(jax.random.key(config.seed), (n, config.encoder.latent_dim)))
  x = m.decode(z, config.seed + 1)
  path = train.write_images(workdir, "samples", "samples", x, z=z)
  log.info("samples written to %s", path)
  return path


def slerp(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Spherical interpolation between codes a, b [L] at weights w [K] -> [K, L]."""
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  cos = np.clip(np.dot(a / na, b / nb), -1.0, 1.0)
  omega = np.arccos(cos)
  if omega < 1e-6:
    return (1 - w)[:, None] * a + w[:, None] * b
  return (np.sin((1 - w) * omega)[:, None] * a + np.sin(w * omega)[:, None] * b) / np.sin(omega)


def interpolate_mode(config, workdir: str, pairs: int = 4, steps: int = 8) -> str:
  """Linear (upper rows) and spherical (lower rows) paths between test codes."""
  m = Models(config, workdir)
  x = _split_arrays(m, 2 * pairs)["image"]
  mu, _ = m.encode(x)
  w = np.linspace(0.0, 1.0, steps)
  lin = [(1 - w)[:, None] * mu[2 * i] + w[:, None] * mu[2 * i + 1] for i in range(pairs)]
  sph = [slerp(mu[2 * i], mu[2 * i + 1], w) for i in range(pairs)]
  z = np.concatenate(lin + sph).astype(np.float32)
  # Deterministic decoding (probability-flow ODE) from one shared x_1, so only
  # z changes along a row.
  ode = config.copy_and_resolve_references()
  with ode.unlocked():
    ode.sampling.method = "ode"
  x1 = np.asarray(jax.random.normal(jax.random.key(config.seed), (1, *m.image_shape)))
  x1 = np.repeat(x1 * sde_lib.from_config(config.sde).prior_std, len(z), axis=0)
  imgs = m.decode(z, config.seed, config=ode, x_init=x1)
  path = train.write_images(
    workdir, "interpolate", "interpolations", imgs, cols=steps, z=z, endpoints=x
  )
  log.info("interpolations written to %s", path)
  return path
