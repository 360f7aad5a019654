"""The judge: a small CNN trained once per workdir on the train split.

It serves two metrics: the class accuracy of reconstructions (does decoding
keep the digit, the shape?) and the Fréchet distance in its penultimate feature
space (FID-style, since Inception features mean nothing on 8x8 digits; these
FIDs are comparable between models judged by one judge, never with published
Inception FIDs). Where the data has factors (shapes; npz with `factors`), the
judge also predicts every factor from the same features (FactorCodec), so its
feature space, and the FID measured in it, sees a wrong colour, position or
angle and not only a wrong class; `make_factor_predict` reads factors back from
images (edit specificity). Training is seeded and deterministic; the parameters
are cached as WORKDIR/classifier/params.npz with a meta.json that says what
they were trained on, and reused while that still matches.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util

from vdae.data import pipeline
from vdae.evaluation import factors
from vdae.io import files
from vdae.io.errors import DataError
from vdae.models.network import Network
from vdae.training import preemption

log = logging.getLogger(__name__)

Params = dict


@dataclasses.dataclass(frozen=True)
class FactorCodec:
  """Factors [N, K] <-> the judge's factor outputs: a continuous factor as one
  standardised value, a circular one as (sin, cos), a categorical one as logits."""

  kinds: tuple[str, ...]
  mean: tuple[float, ...]  # per factor (continuous: its train mean; others 0)
  sd: tuple[float, ...]
  classes: tuple[int, ...]  # per factor (categorical: its class count; others 0)

  @classmethod
  def fit(cls, kinds, values: np.ndarray) -> FactorCodec:
    cont = [k == "continuous" for k in kinds]
    mean = [float(values[:, j].mean()) if c else 0.0 for j, c in enumerate(cont)]
    sd = [float(values[:, j].std()) or 1.0 if c else 1.0 for j, c in enumerate(cont)]
    classes = [
      int(values[:, j].max()) + 1 if k == "categorical" else 0 for j, k in enumerate(kinds)
    ]
    return cls(tuple(kinds), tuple(mean), tuple(sd), tuple(classes))

  def widths(self) -> list[int]:
    return [{"continuous": 1, "circular": 2}.get(k, c) for k, c in zip(self.kinds, self.classes)]

  @property
  def width(self) -> int:
    return sum(self.widths())

  def _parts(self, out):
    lo = 0
    for w in self.widths():
      yield out[:, lo : lo + w]
      lo += w

  def loss(self, out: jax.Array, values: jax.Array) -> jax.Array:
    """Mean over factors: squared error (continuous, circular), cross-entropy (categorical)."""
    terms = []
    for j, (kind, part) in enumerate(zip(self.kinds, self._parts(out))):
      v = values[:, j]
      if kind == "categorical":
        y = v.astype(jnp.int32)
        terms.append(optax.softmax_cross_entropy_with_integer_labels(part, y).mean())
      elif kind == "circular":
        target = jnp.stack([jnp.sin(v), jnp.cos(v)], -1)
        terms.append(jnp.mean(jnp.sum(jnp.square(part - target), -1)))
      else:
        terms.append(jnp.mean(jnp.square(part[:, 0] - (v - self.mean[j]) / self.sd[j])))
    return sum(terms) / len(terms)

  def decode(self, out: np.ndarray) -> np.ndarray:
    """Outputs [N, width] -> factor values [N, K] in the data's own units."""
    cols = []
    for j, (kind, part) in enumerate(zip(self.kinds, self._parts(np.asarray(out)))):
      if kind == "categorical":
        cols.append(part.argmax(-1).astype(np.float32))
      elif kind == "circular":
        cols.append(np.mod(np.arctan2(part[:, 0], part[:, 1]), 2 * np.pi))
      else:
        cols.append(part[:, 0] * self.sd[j] + self.mean[j])
    return np.stack(cols, 1).astype(np.float32)


class Classifier(nnx.Module):
  """x [B, H, W, C] in [-1, 1] -> (logits [B, K], features [B, F], factor outputs
  [B, factor_width]; [B, 0] when the data has no factors).

  Convs with stride 2 until the side is <= 4, then flatten (keeps the layout,
  which matters for digits), a dense feature layer, the logits and the factor head.
  """

  NAMED = ("factor_head",)

  def __init__(
    self,
    in_shape: tuple[int, int, int],
    *,
    num_classes: int,
    channels: int = 32,
    features: int = 64,
    factor_width: int = 0,
    rngs: nnx.Rngs,
  ):
    side, _, in_ch = in_shape
    conv = lambda i, o, s=1: nnx.Conv(i, o, (3, 3), strides=(s, s), rngs=rngs)
    self.convs, ch = nnx.List([conv(in_ch, channels)]), channels
    while side > 4 and side % 2 == 0:
      self.convs.extend([conv(ch, 2 * ch, 2), conv(2 * ch, 2 * ch)])
      ch, side = 2 * ch, side // 2
    self.features = nnx.Linear(side * side * ch, features, rngs=rngs)
    self.factor_head = nnx.Linear(features, factor_width, rngs=rngs) if factor_width else None
    self.logits = nnx.Linear(features, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    h = x
    for conv in self.convs:
      h = nnx.silu(conv(h))
    feats = nnx.silu(self.features(h.reshape(h.shape[0], -1)))
    if self.factor_head is not None:
      factor_out = self.factor_head(feats)
    else:
      factor_out = jnp.zeros((x.shape[0], 0), feats.dtype)
    return self.logits(feats), feats, factor_out


def _meta(eval_cfg, data_cfg, image_shape, num_classes, codec) -> dict:
  return {
    "image_shape": list(image_shape),
    "num_classes": int(num_classes),
    # (through JSON, so that a cached meta.json compares equal)
    "factor_codec": None if codec is None else json.loads(json.dumps(dataclasses.asdict(codec))),
    "channels": eval_cfg.classifier_channels,
    "features": eval_cfg.classifier_features,
    "steps": eval_cfg.classifier_steps,
    "lr": eval_cfg.classifier_lr,
    "seed": eval_cfg.classifier_seed,
    "data": json.loads(data_cfg.to_json_best_effort()),
  }


def train_classifier(
  model: Network,
  images: np.ndarray,
  labels: np.ndarray,
  *,
  steps: int,
  lr: float,
  seed: int,
  batch_size: int = 128,
  factors: np.ndarray | None = None,
  codec: FactorCodec | None = None,
) -> Params:
  """AdamW on cross-entropy over images [N, H, W, C] / labels [N], plus the codec's
  loss on factors [N, K] when given; seeded, deterministic.

  Random +-1 pixel shifts (with edge padding) are the only augmentation: on
  small sets they buy a point or two of test accuracy at no cost. Not with
  factors: a shift would move the object away from its stored position.
  """
  key = jax.random.key(seed)
  k_init, k_data = jax.random.split(key)
  params = model.init(k_init, images.shape[1:])
  sched = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=0.05)
  opt = optax.adamw(sched, weight_decay=1e-4)
  images_d, labels_d = jnp.asarray(images), jnp.asarray(labels)
  factors_d = None if codec is None else jnp.asarray(factors, jnp.float32)
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
    x = images_d[idx]
    if codec is None:
      x = jax.vmap(shift)(x, jax.random.split(k_shift, bs))
    y = labels_d[idx]

    def loss_fn(p):
      logits, _, factor_out = model.apply(p, x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      if codec is not None:
        loss = loss + codec.loss(factor_out, factors_d[idx])
      return loss

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # A Python loop, not lax.fori_loop: on XLA:CPU a conv's input gradient inside
  # a while loop misses the fast (Eigen) kernel and runs ~25x slower.
  opt_state = opt.init(params)
  for i in range(steps):
    params, opt_state = step(params, opt_state, i)
    if i % 100 == 99:  # a SIGTERM is honoured within 100 steps, not after the last
      jax.block_until_ready(params)
      preemption.exit_if_requested("while training the evaluation classifier")
  return jax.device_get(params)


def _batched_apply(model: Network, params: Params, batch: int, pick) -> Callable:
  """x [N, H, W, C] -> pick(the model's outputs) as numpy, in batches."""
  fn = jax.jit(lambda x: pick(model.apply(params, x)))
  return lambda x: pipeline.map_batched(fn, np.asarray(x, np.float32), min(batch, len(x)))


def make_predict(model: Network, params: Params, batch: int = 256) -> Callable:
  """predict(x [N, H, W, C]) -> (logits [N, K], features [N, F]) as numpy, in batches."""
  return _batched_apply(model, params, batch, lambda out: out[:2])


def make_factor_predict(model: Network, params: Params, codec: FactorCodec, batch=256):
  """predict(x [N, H, W, C]) -> the factors the judge reads from the images [N, K]."""
  outputs = _batched_apply(model, params, batch, lambda out: out[2])
  return lambda x: codec.decode(outputs(x))


def codec_from_meta(meta: dict) -> FactorCodec | None:
  c = meta.get("factor_codec")
  return None if c is None else FactorCodec(**{k: tuple(v) for k, v in c.items()})


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


def factor_errors(read: np.ndarray, truth) -> dict[str, float]:
  """Per factor: error rate (categorical), mean angular error in radians
  (circular), RMSE (continuous) of factors read [N, K] against Factors truth."""
  out = {}
  for j, (name, kind) in enumerate(zip(truth.names, truth.kinds)):
    a, b = read[:, j], truth.values[: len(read), j]
    if kind == "categorical":
      out[name] = float(np.mean(a != b))
    elif kind == "circular":
      out[name] = float(np.mean(np.abs(factors.angle_diff(a, b))))
    else:
      out[name] = float(np.sqrt(np.mean(np.square(a - b))))
  return out


def load_or_train(eval_cfg, data_cfg, workdir: str, splits) -> tuple[Classifier, Params, dict]:
  """The cached (or freshly trained) classifier for this workdir's data: its shape and
  training from the `eval` group, the `data` group recorded beside it.

  Returns (model, params, meta); meta['test_accuracy'] is its accuracy on the
  whole test split. Raises DataError if the data has no labels.
  """
  train, test = splits["train"], splits["test"]
  if not train.has_labels:
    raise DataError("the classifier needs labels; this dataset has none.")
  ev = eval_cfg
  tr = train.arrays()
  num_classes = int(tr["label"].max()) + 1
  codec = None
  if train.factors is not None:
    codec = FactorCodec.fit(train.factors.kinds, train.factors.values)
  width = 0 if codec is None else codec.width
  model = Network(
    Classifier,
    num_classes=num_classes,
    channels=ev.classifier_channels,
    features=ev.classifier_features,
    factor_width=width,
  )
  meta = _meta(ev, data_cfg, train.image_shape, num_classes, codec)
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
      factors=None if codec is None else train.factors.values,
      codec=codec,
    )
    te = test.arrays()
    logits, _ = make_predict(model, params)(te["image"])
    meta["test_accuracy"] = float(np.mean(logits.argmax(-1) == te["label"]))
    if codec is not None:  # how well the judge itself reads each factor on real images
      read = make_factor_predict(model, params, codec)(te["image"])
      meta["factor_error"] = factor_errors(read, test.factors)
    if jax.process_index() == 0:
      _save(path, params, meta)
    log.info("classifier test accuracy %.4f (cached in %s)", meta["test_accuracy"], path)
  else:
    meta = files.read_json(os.path.join(path, "meta.json"))
  return model, params, meta
