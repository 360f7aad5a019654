"""--mode=edit: latent editing along each factor's probe direction, and how specific
each edit is, for the VDAE and the VAE (data with factors: shapes, npz with `factors`).

For each factor, a linear map from codes to the factor (least squares on the
train split's codes: the value; (sin, cos) of an angle) gives the smallest code
change that moves its prediction by k factor sds (k in edit.steps; an angle
turns by k sds); a categorical factor moves instead by the difference of
class-mean codes, to each class. Every code is decoded deterministically, so
only the code changes along a row: the VDAE from each image's own x_1 (the PF
ODE run forwards with the unedited code, as Diff-AE edits), the VAE by its
decoder's mean. The judge (vdae/evaluation/classifier.py) reads every factor
back from the decoded images; against the unedited decode:

  <model>/edit/<factor>/effect       mean change of the edited factor, in its sds
                                     (categorical: the share of images whose
                                     class the judge reads as changed)
  <model>/edit/<factor>/leakage      the same, averaged over the other factors
  <model>/edit/<factor>/specificity  effect / (effect + leakage), in [0, 1]

Writes WORKDIR/edit/<factor>.png (a block of rows per model, a column per step,
the originals first), WORKDIR/edit/metrics.json, and the grids and scalars to
TensorBoard (run `edit`).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from vdae.autoencoders import registry
from vdae.data import pipeline
from vdae.evaluation import classifier
from vdae.evaluation.factors import angle_diff, circle
from vdae.io import files, writer
from vdae.io.errors import ConfigError, DataError
from vdae.training import stages

log = logging.getLogger(__name__)

MODELS = ("vdae", "vae")  # the autoencoders with codes of their own (registry.AUTOENCODERS)


def _linear_map(z: np.ndarray, target: np.ndarray) -> np.ndarray:
  """W [m, L] of the least-squares fit target [N, m] ~ z W^T + b."""
  zc = np.concatenate([z, np.ones((len(z), 1))], 1)
  coef, *_ = np.linalg.lstsq(zc, target, rcond=None)
  return coef[:-1].T


def factor_sd(values: np.ndarray, kind: str) -> float:
  """The unit of an edit step: the sd (circular: of the angle's deviation from its
  circular mean; categorical: 1)."""
  if kind == "categorical":
    return 1.0
  if kind == "circular":
    mean = np.angle(np.mean(np.exp(1j * values)))
    return float(np.std(angle_diff(values, mean)))
  return float(np.std(values))


def edited_codes(z, train_z, train_values, kind: str, steps, sd: float, own=None) -> np.ndarray:
  """Codes z [N, L] edited along one factor (train_values [M] against train_z [M, L]):
  [columns, N, L], a column per step (categorical: per class; `own` [N] the
  images' classes)."""
  if kind == "categorical":
    classes = np.unique(train_values).astype(int)
    means = np.stack([train_z[train_values == c].mean(0) for c in classes])
    return np.stack([z + means[c] - means[np.asarray(own, int)] for c in classes])
  if kind == "circular":
    w = _linear_map(train_z, circle(train_values))  # [2, L]
    pred = z @ w.T  # the probe's (sin, cos) of each code, up to its intercept
    angle, radius = np.arctan2(pred[:, 0], pred[:, 1]), np.linalg.norm(pred, axis=1)
    pinv = np.linalg.pinv(w)  # [L, 2]: the smallest code change for a target change
    turn = lambda k: radius[:, None] * circle(angle + k * sd) - pred
    return np.stack([z + turn(k) @ pinv.T for k in steps])
  w = _linear_map(train_z, train_values[:, None])  # [1, L]
  return np.stack([z + k * sd * np.linalg.pinv(w)[:, 0] for k in steps])


def _change(a: np.ndarray, b: np.ndarray, kind: str, sd: float) -> np.ndarray:
  if kind == "categorical":
    return (a != b).astype(np.float64)
  d = np.abs(angle_diff(a, b)) if kind == "circular" else np.abs(a - b)
  return d / max(sd, 1e-12)


def specificity(read: np.ndarray, base: np.ndarray, j: int, kinds, sds) -> dict[str, float]:
  """Effect, leakage and specificity of edits of factor j: read [S, N, K] factors of
  the edited decodes against base [N, K], those of the unedited ones."""
  changes = np.stack(
    [_change(read[..., i], base[None, :, i], k, sds[i]).mean() for i, k in enumerate(kinds)]
  )
  effect = float(changes[j])
  leakage = float(np.mean(np.delete(changes, j))) if len(kinds) > 1 else 0.0
  total = effect + leakage
  return {"effect": effect, "leakage": leakage, "specificity": effect / total if total else 0.0}


def edit(config, workdir: str) -> str:
  ed, batch = config.edit, config.eval.batch_size
  unknown = [m for m in ed.models if m not in MODELS]
  if unknown:
    raise ConfigError(f"edit.models: {unknown[0]!r} is not one of {', '.join(MODELS)}.")
  ctx = stages.context(config, workdir)
  train, test = ctx.splits["train"], ctx.splits["test"]
  if train.factors is None:
    raise DataError(
      f"--mode=edit needs data with factors; data.source={config.data.source} has none "
      "(use data.source=shapes, or an npz with `factors`, `factor_names`, `factor_kinds`)."
    )
  f = train.factors
  names, kinds = f.names, f.kinds
  sds = [factor_sd(f.values[:, j], k) for j, k in enumerate(kinds)]
  model, params, meta = classifier.load_or_train(config.eval, config.data, workdir, ctx.splits)
  codec = classifier.codec_from_meta(meta)
  read_factors = classifier.make_factor_predict(model, params, codec)
  n_train = min(len(train), ed.num_train)
  x_train = train.arrays(n_train)["image"]
  x = test.arrays(ed.num_images)["image"]
  own = test.factors.values[: len(x)]
  models = {}
  for name in ed.models:
    entry = registry.AUTOENCODERS[name]
    if not stages.is_trained(entry.stage, config, workdir):
      log.warning("no %s checkpoint in %s: no %s edits", entry.stage, workdir, name)
      continue
    models[name] = entry.load(config, workdir, ctx.mesh, ctx.image_shape)
  if not models:
    raise DataError(f"--mode=edit: neither the VDAE nor the VAE is trained in {workdir}.")
  out_dir = os.path.join(workdir, "edit")
  tb = writer.Writer(os.path.join(workdir, "tensorboard", "edit"))
  metrics, paths = {}, []
  codes = {
    m: (pipeline.map_batched(ae.encode, x_train, batch), pipeline.map_batched(ae.encode, x, batch))
    for m, ae in models.items()
  }
  decoders = {m: _decoder(ae, x, codes[m][1], batch, config.seed) for m, ae in models.items()}
  # What the judge reads from each model's unedited decodes: every edit is measured from it.
  base = {m: read_factors(decode(codes[m][1].astype(np.float32))) for m, decode in decoders.items()}
  for j, (fname, kind) in enumerate(zip(names, kinds)):
    blocks = []
    for m, decode in decoders.items():
      train_z, z = codes[m]
      cols = edited_codes(z, train_z, f.values[:n_train, j], kind, ed.steps, sds[j], own[:, j])
      images = np.stack([decode(c) for c in cols.astype(np.float32)])
      read = read_factors(images.reshape(-1, *x.shape[1:])).reshape(len(cols), len(x), -1)
      scores = specificity(read, base[m], j, kinds, sds)
      metrics.update({f"{m}/edit/{fname}/{k}": v for k, v in scores.items()})
      # Rows: an image, its edits left to right; the model's block under the last.
      blocks.append(np.concatenate([x[:, None], images.transpose(1, 0, 2, 3, 4)], 1))
    grid = np.concatenate(blocks).reshape(-1, *x.shape[1:])
    columns = len(blocks[0][0])
    header = f"{fname}: rows {' then '.join(models)}; originals, then {_labels(kind, ed.steps)}"
    paths.append(_write_grid(out_dir, fname, grid, columns, header, np.asarray(ed.steps)))
    tb.image(0, f"edit/{fname}", grid)
    tb.text(0, f"edit/{fname}", header)
    log.info(
      "edit %s: %s",
      fname,
      ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if f"/{fname}/" in k),
    )
  tb.scalars(0, {f"edit/{k}": v for k, v in metrics.items()})
  tb.close()
  if jax.process_index() == 0:
    files.write_json(os.path.join(out_dir, "metrics.json"), metrics)
  log.info("edit grids: %s", ", ".join(paths))
  return out_dir


def _decoder(ae, x: np.ndarray, z: np.ndarray, batch: int, seed: int):
  """codes [N, L] -> images [N, ...] for the rows of x, deterministic. A model that
  can invert (the VDAE) decodes from each image's own x_1, found with its unedited
  code (Diff-AE's manipulation), so what the code does not hold stays; the
  others decode their mode (the VAE: its decoder's mean)."""
  if not ae.invertible:
    key = jax.random.key(seed)
    return lambda zs: pipeline.map_batched(lambda zb: ae.decode(zb, key, "mode"), zs, batch)
  x_1 = pipeline.map_batched(ae.invert, (x, z.astype(np.float32)), batch)
  return lambda zs: pipeline.map_batched(ae.decode_inverted, (zs, x_1), batch)


def _write_grid(out_dir, name, images, cols, header, steps) -> str:
  """OUT_DIR/name.png: the grid under one line of text saying what its rows and
  columns are; name.npz: the images and steps."""
  from PIL import Image, ImageDraw

  path = os.path.join(out_dir, f"{name}.png")
  if jax.process_index() != 0:
    return path
  g = writer.grid(images, cols)
  scale = writer.auto_scale(images.shape[1])
  g = g.repeat(scale, 0).repeat(scale, 1)
  img = Image.new("RGB", (max(g.shape[1], 6 * len(header) + 8), g.shape[0] + 16), "white")
  img.paste(Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).convert("RGB"), (0, 16))
  ImageDraw.Draw(img).text((4, 2), header, fill="black")
  files.write_with(path, lambda f: img.save(f, format="PNG"))
  files.write_npz(os.path.join(out_dir, f"{name}.npz"), images=images, steps=steps)
  return path


def _labels(kind: str, steps) -> str:
  return "each class" if kind == "categorical" else "steps " + " ".join(f"{k:+g} sd" for k in steps)
