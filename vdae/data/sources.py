"""Data sources: random-access train/test splits of images in [-1, 1].

Sources (config.data.source):
  digits        scikit-learn's 8x8 digits, embedded; a fixed seeded split.
  shapes        generated colour images of one object with 7 known factors
                (vdae/data/shapes.py), data.image_size square (0: 32); fixed
                train and test splits of data.shapes_num_train / _num_test.
  npz           `image` [N, H, W(, C)] uint8 in [0, 255] or float in [0, 1],
                optional `label` [N], optional `factors` [N, K] with
                `factor_names` [K] and `factor_kinds` [K] (continuous,
                circular in radians, or categorical 0..C-1); a fixed seeded
                split. (`images` / `labels` are read too.)
  folder        PNG/JPEG files under a folder (labels from sub-folder names
                when every image sits in one); a fixed seeded split.
  array_record  ArrayRecord files of serialized tf.train.Example records with
                an encoded `image` and optional `label` (what TFDS `prepare`
                writes); `path` is a glob, the test split is `path` with
                "train" replaced by "test" when such files exist.

Every image is scaled to [-1, 1] float32 [H, W, C] as it is read. Batches are
made by vdae/data/pipeline.py; a split's factors (Factors) are read by the
evaluation (vdae/evaluation/factors.py), not batched.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable

import grain
import numpy as np

from vdae import schema
from vdae.io.errors import ConfigError, DataError, require_local

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
FACTOR_KINDS = ("continuous", "circular", "categorical")


@dataclasses.dataclass(frozen=True)
class Factors:
  """What generated each image of a split: values [N, K] float32 aligned with the
  split's items, one name and kind (FACTOR_KINDS) per column."""

  names: tuple[str, ...]
  kinds: tuple[str, ...]
  values: np.ndarray

  def take(self, idx: np.ndarray) -> Factors:
    return Factors(self.names, self.kinds, self.values[idx])


@dataclasses.dataclass(frozen=True)
class Split:
  """A random-access split: `get(i)` -> (image [H, W, C] float32 in [-1, 1], label).

  `rows[i]` is item i's row in the source (npz row, sorted file, record), so
  `index` in batches and in encode's latents.npz points back into the user's data.
  """

  name: str
  length: int
  get: Callable[[int], tuple[np.ndarray, int]]
  image_shape: tuple[int, int, int]
  has_labels: bool
  rows: np.ndarray | None = None  # None: the split is the whole source, in order
  factors: Factors | None = None

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    image, label = self.get(int(i))
    row = int(i) if self.rows is None else int(self.rows[int(i)])
    return {"image": image, "label": np.int32(label), "index": np.int32(row)}

  def arrays(self, limit: int | None = None) -> dict[str, np.ndarray]:
    """The whole split (or its first `limit` items) as stacked numpy arrays."""
    n = len(self) if limit is None else min(limit, len(self))
    items = [self[i] for i in range(n)]
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


# --- validation ---------------------------------------------------------------
def _to_unit_range(images: np.ndarray, where: str) -> np.ndarray:
  """uint8 [0, 255] or float [0, 1] -> float32 [-1, 1], with clear errors."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  if not np.issubdtype(images.dtype, np.floating):
    raise DataError(
      f"{where}: images have dtype {images.dtype}; expected uint8 in [0, 255] or float in "
      "[0, 1]. Convert them (e.g. images.astype(np.uint8)) and try again."
    )
  bad = ~np.isfinite(images)
  if bad.any():
    first = np.argwhere(bad)[0]
    raise DataError(
      f"{where}: {int(bad.sum())} non-finite pixel values (NaN/inf), the first at index "
      f"{tuple(int(i) for i in first)}. Clean or drop those images."
    )
  lo, hi = float(images.min()), float(images.max())
  if lo < 0.0 or hi > 1.0:
    raise DataError(
      f"{where}: float images must lie in [0, 1]; found values in [{lo:.3g}, {hi:.3g}]. "
      "Rescale them (or store uint8 in [0, 255])."
    )
  return images.astype(np.float32) * 2.0 - 1.0


def _as_nhwc(images: np.ndarray, where: str) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise DataError(
      f"{where}: images have shape {images.shape}; expected [N, H, W] or [N, H, W, C] "
      "with C in 1, 3 or 4."
    )
  if images.shape[0] == 0:
    raise DataError(f"{where}: the dataset is empty (0 images).")
  return images


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  if not 0.0 < test_fraction < 1.0:
    raise ConfigError(f"data.test_fraction must be in (0, 1); got {test_fraction}.")
  perm = np.random.default_rng(seed).permutation(n)
  n_test = max(1, int(round(n * test_fraction)))
  if n - n_test < 1:
    raise DataError(f"the dataset has {n} image(s): too few to hold out a test split.")
  return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _check_factors(f, names, kinds, n: int, where: str) -> Factors:
  """Factors from an npz's arrays, or a DataError naming what is wrong."""
  if names is None or kinds is None:
    raise DataError(
      f"{where}: `factors` needs `factor_names` [K] and `factor_kinds` [K] beside it "
      f"(each kind one of {', '.join(FACTOR_KINDS)})."
    )
  f, names, kinds = np.asarray(f), [str(a) for a in names], [str(a) for a in kinds]
  if f.ndim != 2 or f.shape[0] != n:
    raise DataError(
      f"{where}: `factors` has shape {f.shape}; expected [{n}, K] (one row per image)."
    )
  if not np.issubdtype(f.dtype, np.number):
    raise DataError(f"{where}: `factors` has dtype {f.dtype}; expected numbers.")
  if len(names) != f.shape[1] or len(kinds) != f.shape[1]:
    raise DataError(
      f"{where}: {f.shape[1]} factor columns but {len(names)} factor_names and "
      f"{len(kinds)} factor_kinds; give one name and kind per column."
    )
  bad = [k for k in kinds if k not in FACTOR_KINDS]
  if bad:
    raise DataError(f"{where}: unknown factor kind {bad[0]!r}; each must be one of {FACTOR_KINDS}.")
  if len(set(names)) != len(names) or any(not a or "/" in a for a in names):
    raise DataError(f"{where}: factor_names {names} must be unique, non-empty, without '/'.")
  f = f.astype(np.float64)
  if not np.all(np.isfinite(f)):
    col = int(np.argwhere(~np.isfinite(f))[0][1])
    raise DataError(f"{where}: factor {names[col]!r} holds non-finite values (NaN/inf).")
  for j, k in enumerate(kinds):
    if k == "categorical" and (np.any(f[:, j] < 0) or np.any(f[:, j] != np.round(f[:, j]))):
      raise DataError(f"{where}: categorical factor {names[j]!r} must hold class indices 0, 1, ...")
  return Factors(tuple(names), tuple(kinds), f.astype(np.float32))


def _to_images(images: np.ndarray, where: str) -> np.ndarray:
  """Validated [N, H, W, C]: uint8 kept (converted as read), float made [-1, 1]."""
  images = _as_nhwc(np.asarray(images), where)
  return images if images.dtype == np.uint8 else _to_unit_range(images, where)


def _split(name, images, labels, rows=None, factors=None) -> Split:
  """A split over in-memory images (uint8, scaled as read, or float in [-1, 1])."""
  if images.dtype == np.uint8:
    read = lambda i: images[i].astype(np.float32) / 127.5 - 1.0
  else:
    read = lambda i: images[i]
  has = labels is not None
  lbs = labels.astype(np.int64) if has else np.full(len(images), -1)
  return Split(
    name,
    len(images),
    lambda i: (read(i), int(lbs[i])),
    tuple(images.shape[1:]),
    has,
    rows=rows,
    factors=factors,
  )


def _in_memory_splits(images, labels, test_fraction, where, factors=None) -> dict[str, Split]:
  images = _to_images(images, where)
  if labels is not None:
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[0]:
      raise DataError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images.")
  # The split's seed is fixed, not data.shuffle_seed: the held-out set must
  # not change when a user reshuffles training.
  tr, te = _split_indices(images.shape[0], test_fraction, seed=1234)
  return {
    name: _split(
      name,
      images[idx],
      None if labels is None else labels[idx],
      rows=idx,
      factors=None if factors is None else factors.take(idx),
    )
    for name, idx in (("train", tr), ("test", te))
  }


# --- sources ---------------------------------------------------------------------
def _digits(cfg) -> dict[str, Split]:
  from sklearn.datasets import load_digits

  d = load_digits()
  images = (d.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
  return _in_memory_splits(images, d.target, cfg.test_fraction, "digits")


def _shapes(cfg) -> dict[str, Split]:
  from vdae.data import shapes

  if cfg.shapes_num_train < 1 or cfg.shapes_num_test < 1:
    raise ConfigError(
      "data.shapes_num_train and data.shapes_num_test must be at least 1; got "
      f"{cfg.shapes_num_train} and {cfg.shapes_num_test}."
    )
  size = cfg.image_size or 32
  if size < 8:
    raise ConfigError(f"data.image_size={size} is too small for shapes; use 16, 32 or 64.")
  out = {}
  generated = shapes.generate(cfg.shapes_num_train, cfg.shapes_num_test, size)
  for name, (images, values) in zip(("train", "test"), generated):
    factors = Factors(shapes.NAMES, shapes.KINDS, values)
    out[name] = _split(name, images, values[:, 0].astype(np.int64), factors=factors)
  return out


def _npz(cfg) -> dict[str, Split]:
  path = _existing(cfg.path, "npz")
  try:
    with np.load(path, allow_pickle=False) as f:
      get = lambda *keys: next((f[k] for k in keys if k in f.files), None)
      images = get("image", "images")
      if images is None:
        raise DataError(f"{path}: no `image` array (found {sorted(f.files)}).")
      labels = get("label", "labels")
      values = get("factors")
      factors = None
      if values is not None:
        names, kinds = get("factor_names"), get("factor_kinds")
        factors = _check_factors(values, names, kinds, len(images), path)
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: not a readable .npz file ({e}).") from e
  return _in_memory_splits(images, labels, cfg.test_fraction, path, factors)


def _decode_image(data: bytes | str, size: int, channels: int | None, where: str) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError

  try:
    img = Image.open(data if isinstance(data, str) else _BytesIO(data))
    img.load()
  except (OSError, UnidentifiedImageError) as e:
    raise DataError(f"{where}: cannot decode image ({e}).") from e
  if channels is None:
    channels = 1 if img.mode in ("L", "1", "I", "I;16", "F") else 3
  img = img.convert("L" if channels == 1 else "RGB")
  if size:
    img = img.resize((size, size), Image.BILINEAR)
  arr = np.asarray(img, dtype=np.uint8)
  arr = arr[..., None] if arr.ndim == 2 else arr
  return arr.astype(np.float32) / 127.5 - 1.0


def _BytesIO(b: bytes):
  import io

  return io.BytesIO(b)


def _check_shape(img: np.ndarray, shape: tuple, where: str) -> np.ndarray:
  if img.shape != shape:
    raise DataError(
      f"{where}: image of shape {img.shape}, but the dataset's first image has {shape}. "
      "Resize your images to one size, or set --config.data.image_size=N."
    )
  return img


def _folder(cfg) -> dict[str, Split]:
  root = _existing(cfg.path, "folder")
  if not os.path.isdir(root):
    raise DataError(f"data.path={root!r} is not a folder of images.")
  files = sorted(
    os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs if f.lower().endswith(IMAGE_EXTS)
  )
  if not files:
    raise DataError(f"{root}: the folder holds no {'/'.join(IMAGE_EXTS)} images (empty dataset).")
  parents = [os.path.relpath(os.path.dirname(f), root) for f in files]
  has_labels = all(p != "." for p in parents)
  classes = sorted(set(parents)) if has_labels else []
  labels = np.array([classes.index(p) for p in parents] if has_labels else [-1] * len(files))
  first = _decode_image(files[0], cfg.image_size, None, files[0])
  shape, channels = first.shape, first.shape[-1]
  tr, te = _split_indices(len(files), cfg.test_fraction, seed=1234)
  out = {}
  for name, idx in (("train", tr), ("test", te)):

    def get(i, idx=idx):
      f = files[idx[i]]
      return _check_shape(_decode_image(f, cfg.image_size, channels, f), shape, f), int(
        labels[idx[i]]
      )

    out[name] = Split(name, len(idx), get, shape, has_labels, rows=idx)
  return out


def _parse_example(record: bytes, size: int, channels: int | None, where: str):
  """tf.train.Example -> (image, label, has_label), parsed without TensorFlow."""
  from vdae.data.tf_example import Example

  ex = Example.FromString(record)
  feat = ex.features.feature
  key = next((k for k in ("image", "image/encoded") if k in feat), None)
  if key is None:
    raise DataError(f"{where}: record has no `image` feature (features: {sorted(feat)}).")
  image = _decode_image(feat[key].bytes_list.value[0], size, channels, where)
  label = int(feat["label"].int64_list.value[0]) if "label" in feat else -1
  return image, label, "label" in feat


def _array_record(cfg) -> dict[str, Split]:
  if not cfg.path:
    raise ConfigError(
      "data.source=array_record needs --config.data.path=GLOB of .array_record files."
    )
  require_local("data.path", cfg.path)
  train_files = sorted(glob.glob(cfg.path))
  if not train_files:
    raise DataError(f"data.path={cfg.path!r} matches no files.")
  test_glob = cfg.path.replace("train", "test")
  test_files = sorted(glob.glob(test_glob)) if test_glob != cfg.path else []
  src = grain.sources.ArrayRecordDataSource(train_files)
  if len(src) == 0:
    raise DataError(f"{cfg.path}: the ArrayRecord files hold no records (empty dataset).")
  first, _, has_labels = _parse_example(src[0], cfg.image_size, None, train_files[0])
  shape, channels = first.shape, first.shape[-1]

  def make(name, source, lo=0, n=None):
    n = len(source) - lo if n is None else n

    def get(i):
      image, label, _ = _parse_example(source[lo + i], cfg.image_size, channels, cfg.path)
      return _check_shape(image, shape, f"{cfg.path} record {lo + i}"), label

    return Split(name, n, get, shape, has_labels, rows=np.arange(lo, lo + n))

  if test_files:
    return {
      "train": make("train", src),
      "test": make("test", grain.sources.ArrayRecordDataSource(test_files)),
    }
  # No test files: hold out the tail (records are already shuffled by TFDS).
  n_test = max(1, int(round(len(src) * cfg.test_fraction)))
  return {
    "train": make("train", src, 0, len(src) - n_test),
    "test": make("test", src, len(src) - n_test, n_test),
  }


def _existing(path: str, source: str) -> str:
  if not path:
    raise ConfigError(f"data.source={source} needs --config.data.path=...")
  require_local("data.path", path)
  if not os.path.exists(path):
    raise DataError(f"data.path={path!r} does not exist.")
  return path


SOURCES = {
  "digits": _digits,
  "shapes": _shapes,
  "npz": _npz,
  "folder": _folder,
  "array_record": _array_record,
}


def load_splits(data_cfg) -> dict[str, Split]:
  """{'train': Split, 'test': Split} for the configured source."""
  return SOURCES[schema.require("data.source", data_cfg.source, tuple(SOURCES))](data_cfg)


def data_levels(data_cfg, eval_cfg) -> int:
  """Levels of the raw pixels: eval.data_levels, or 17 for digits (0..16), else 256."""
  if eval_cfg.data_levels:
    return int(eval_cfg.data_levels)
  return 17 if data_cfg.source == "digits" else 256
