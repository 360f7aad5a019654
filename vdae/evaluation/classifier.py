"""The evaluation classifier: a small CNN trained once per workdir on the train split.

It serves two metrics: the class accuracy of reconstructions (does decoding
keep the digit?) and the Fréchet distance in its penultimate feature space
(FID-style, since Inception features mean nothing on 8x8 digits). Training is
seeded and deterministic; the parameters are cached as WORKDIR/classifier/
params.npz with a meta.json that says what they were trained on, and reused
while that still matches.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from vdae.data import pipeline
from vdae.io import files
from vdae.io.errors import DataError

log = logging.getLogger(__name__)

Params = dict


class Classifier(nn.Module):
  """x [B, H, W, C] in [-1, 1] -> (logits [B, K], features [B, F]).

  Convs with stride 2 until the side is <= 4, then flatten (keeps the layout,
  which matters for digits), a dense feature layer and the logits.
  """

  num_classes: int
  channels: int = 32
  features: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    h = nn.silu(nn.Conv(self.channels, (3, 3))(x))
    ch = self.channels
    while h.shape[1] > 4 and h.shape[1] % 2 == 0:
      ch *= 2
      h = nn.silu(nn.Conv(ch, (3, 3), strides=(2, 2))(h))
      h = nn.silu(nn.Conv(ch, (3, 3))(h))
    h = h.reshape(h.shape[0], -1)
    feats = nn.silu(nn.Dense(self.features)(h))
    return nn.Dense(self.num_classes)(feats), feats


def _meta(eval_cfg, data_cfg, image_shape, num_classes) -> dict:
  return {
    "image_shape": list(image_shape),
    "num_classes": int(num_classes),
    "channels": eval_cfg.classifier_channels,
    "features": eval_cfg.classifier_features,
    "steps": eval_cfg.classifier_steps,
    "lr": eval_cfg.classifier_lr,
    "seed": eval_cfg.classifier_seed,
    "data": json.loads(data_cfg.to_json_best_effort()),
  }


def train_classifier(
  model: Classifier,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  steps: int,
  lr: float,
  seed: int,
  batch_size: int = 128,
) -> Params:
  """Adam on cross-entropy over images [N, H, W, C] / labels [N]; seeded, deterministic.

  Random +-1 pixel shifts (with edge padding) are the only augmentation: on
  small sets they buy a point or two of test accuracy at no cost.
  """
  key = jax.random.key(seed)
  k_init, k_data = jax.random.split(key)
  params = model.init(k_init, jnp.zeros((1, *images.shape[1:])))["params"]
  sched = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=0.05)
  opt = optax.adamw(sched, weight_decay=1e-4)
  images_d, labels_d = jnp.asarray(images), jnp.asarray(labels)
  n = images.shape[0]
  bs = min(batch_size, n)

  def shift(x, k):
    dy, dx = jax.random.randint(k, (2,), -1, 2)
    pad = jnp.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return jax.lax.dynamic_slice(pad, (1 + dy, 1 + dx, 0), x.shape)

  @jax.jit
  def step(params, opt_state, i):
    k_idx, k_shift = jax.random.split(jax.random.fold_in(k_data, i))
    idx = jax.random.randint(k_idx, (bs,), 0, n)
    x = jax.vmap(shift)(images_d[idx], jax.random.split(k_shift, bs))
    y = labels_d[idx]

    def loss_fn(p):
      logits, _ = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # A Python loop, not lax.fori_loop: on XLA:CPU a conv's input gradient inside
  # a while loop misses the fast (Eigen) kernel and runs ~25x slower.
  opt_state = opt.init(params)
  for i in range(steps):
    params, opt_state = step(params, opt_state, i)
  return jax.device_get(params)


def make_predict(model: Classifier, params: Params, batch: int = 256) -> Callable:
  """predict(x [N, H, W, C]) -> (logits [N, K], features [N, F]) as numpy, in batches."""
  fn = jax.jit(lambda x: model.apply({"params": params}, x))

  def predict(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float32)
    return pipeline.map_batched(fn, x, min(batch, len(x)))

  return predict


def _save(path: str, params: Params, meta: dict) -> None:
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
  files.write_npz(os.path.join(path, "params.npz"), **flat)
  files.write_json(os.path.join(path, "meta.json"), meta)  # last: it marks the cache whole


def _load(path: str, meta: dict) -> Params | None:
  """Cached params if WORKDIR/classifier holds ones trained exactly as `meta` says."""
  try:
    cached = files.read_json(os.path.join(path, "meta.json"))
    if {k: cached.get(k) for k in meta} != meta:
      log.info("classifier cache in %s was trained differently; retraining", path)
      return None
    flat = files.read_npz(os.path.join(path, "params.npz"))
    return traverse_util.unflatten_dict(
      {tuple(k.split("/")): jnp.asarray(v) for k, v in flat.items()}
    )
  except (OSError, ValueError, KeyError):
    return None


def load_or_train(config, workdir: str, splits) -> tuple[Classifier, Params, dict]:
  """The cached (or freshly trained) classifier for this workdir's data.

  Returns (model, params, meta); meta['test_accuracy'] is its accuracy on the
  whole test split. Raises DataError if the data has no labels.
  """
  train, test = splits["train"], splits["test"]
  if not train.has_labels:
    raise DataError("the classifier needs labels; this dataset has none.")
  ev = config.eval
  tr = train.arrays()
  num_classes = int(tr["label"].max()) + 1
  model = Classifier(num_classes, ev.classifier_channels, ev.classifier_features)
  meta = _meta(ev, config.data, train.image_shape, num_classes)
  path = os.path.join(workdir, "classifier")
  params = _load(path, meta)
  if params is None:
    log.info("training the evaluation classifier (%d steps)", ev.classifier_steps)
    params = train_classifier(
      model,
      tr["image"],
      tr["label"],
      steps=ev.classifier_steps,
      lr=ev.classifier_lr,
      seed=ev.classifier_seed,
    )
    te = test.arrays()
    logits, _ = make_predict(model, params)(te["image"])
    meta["test_accuracy"] = float(np.mean(logits.argmax(-1) == te["label"]))
    if jax.process_index() == 0:
      _save(path, params, meta)
    log.info("classifier test accuracy %.4f (cached in %s)", meta["test_accuracy"], path)
  else:
    meta = files.read_json(os.path.join(path, "meta.json"))
  return model, params, meta
