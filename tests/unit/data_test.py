"""Each data source reads files the test writes; bad data gives clear errors."""

import os

import numpy as np
import pytest
from PIL import Image

from vdae.data import pipeline, sources
from vdae.io.errors import ConfigError, DataError


def _cfg(tiny_config, **kw):
  c = tiny_config.data
  with c.unlocked():
    for k, v in kw.items():
      setattr(c, k, v)
  return c


def _pixels(n=20, h=6, w=5, c=1, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def test_digits_split_is_fixed_and_scaled(tiny_config):
  s = sources.load_splits(tiny_config.data)
  assert len(s["train"]) + len(s["test"]) == 1797
  assert s["train"].image_shape == (8, 8, 1)
  a = s["test"].arrays(10)
  assert a["image"].min() >= -1 and a["image"].max() <= 1 and a["image"].max() > 0.5
  again = sources.load_splits(tiny_config.data)["test"].arrays(10)
  np.testing.assert_array_equal(a["label"], again["label"])


def test_npz_uint8_with_labels(tmp_path, tiny_config):
  ims = _pixels()
  np.savez(tmp_path / "d.npz", images=ims, labels=np.arange(20))
  s = sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "d.npz")))
  assert s["train"].image_shape == (6, 5, 1) and s["train"].has_labels
  item = s["train"][0]
  # label k belongs to image k: the pixels follow their label through the split
  k = int(item["label"])
  np.testing.assert_allclose(item["image"], ims[k] / 127.5 - 1, atol=1e-6)
  assert int(item["index"]) == k  # `index` is the row in the user's file


def test_npz_float_rgb_without_labels(tmp_path, tiny_config):
  ims = np.random.default_rng(1).random((12, 4, 4, 3)).astype(np.float32)
  np.savez(tmp_path / "f.npz", images=ims)
  s = sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "f.npz")))
  assert s["test"].image_shape == (4, 4, 3) and not s["test"].has_labels
  assert s["test"][0]["label"] == -1


@pytest.mark.parametrize(
  "bad,msg",
  [
    (np.full((5, 4, 4), np.nan, np.float32), "non-finite"),
    (np.zeros((0, 4, 4), np.uint8), "empty"),
    (np.zeros((5, 4), np.uint8), "shape"),
    (np.full((5, 4, 4), 3.0, np.float32), r"\[0, 1\]"),
    (np.zeros((5, 4, 4), np.int64), "dtype"),
  ],
)
def test_npz_bad_arrays_are_named(tmp_path, tiny_config, bad, msg):
  np.savez(tmp_path / "b.npz", images=bad)
  with pytest.raises(DataError, match=msg):
    sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "b.npz")))


def test_npz_missing_file_and_key(tmp_path, tiny_config):
  with pytest.raises(DataError, match="does not exist"):
    sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "nope.npz")))
  np.savez(tmp_path / "k.npz", pictures=_pixels())
  with pytest.raises(DataError, match="no `image` array"):
    sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "k.npz")))
  with pytest.raises(ConfigError, match="data.path"):
    sources.load_splits(_cfg(tiny_config, source="npz", path=""))


@pytest.mark.parametrize("source", ["npz", "folder", "array_record"])
def test_bucket_paths_are_refused_with_the_copy_to_make(tiny_config, source):
  """Every reader opens local files: a gs:// path would fail deep in a reader, or on a
  worker that lacks it, so it is refused up front with the command that copies it."""
  path = "gs://bucket/cifar10/cifar10-train.array_record*"
  with pytest.raises(ConfigError, match=r"remote path.*launch/tpu_setup.sh -d"):
    sources.load_splits(_cfg(tiny_config, source=source, path=path))


def _shapes_cfg(tiny_config, size=16, n_train=300, n_test=60):
  return _cfg(
    tiny_config, source="shapes", image_size=size, shapes_num_train=n_train, shapes_num_test=n_test
  )


def test_shapes_are_fixed_disjoint_and_carry_their_factors(tiny_config):
  from vdae.data import shapes

  s = sources.load_splits(_shapes_cfg(tiny_config))
  tr, te = s["train"], s["test"]
  assert (len(tr), len(te)) == (300, 60) and tr.image_shape == (16, 16, 3) and tr.has_labels
  f = te.factors
  assert f.names == shapes.NAMES and f.kinds == shapes.KINDS and f.values.shape == (60, 7)
  a = te.arrays()
  np.testing.assert_array_equal(a["label"], f.values[:, 0])  # the label is the shape class
  # The test split does not depend on how many training images are drawn, and
  # no test image is a training image.
  more = sources.load_splits(_shapes_cfg(tiny_config, n_train=500))
  np.testing.assert_array_equal(more["test"].arrays()["image"], a["image"])
  flat = lambda x: {im.tobytes() for im in x}
  assert not flat(a["image"]) & flat(more["train"].arrays()["image"])
  v = tr.factors.values
  assert set(np.unique(v[:, 0])) == {0, 1, 2}
  for j in (1, 2, 6):  # angles in [0, 2 pi)
    assert 0 <= v[:, j].min() and v[:, j].max() < 2 * np.pi
  assert np.all((v[:, 3:5] > v[:, 5:6]) & (v[:, 3:5] < 1 - v[:, 5:6]))  # inside the frame
  assert sources.load_splits(_shapes_cfg(tiny_config, size=32))["train"].image_shape == (32, 32, 3)


def test_shapes_draw_each_factor_where_the_factor_says():
  """Rendered objects sit at (x, y), grow with scale, take the object hue; the
  edges are anti-aliased (values between background and object)."""
  from vdae.data import shapes

  size = 32
  base = np.array([1, 0.0, np.pi, 0.3, 0.6, 0.2, 0.0], np.float32)  # a red disc
  img = shapes.render(base[None], size)[0].astype(np.float64)
  lum = img.sum(-1)
  ys, xs = np.nonzero(lum > lum.mean())
  assert abs(xs.mean() + 0.5 - 0.3 * size) < 1.0 and abs(ys.mean() + 0.5 - 0.6 * size) < 1.0
  centre = img[int(0.6 * size), int(0.3 * size) - 1]
  assert centre[0] > centre[1] and centre[0] > centre[2]  # hue 0: red
  bigger = base.copy()
  bigger[5] = 0.25
  assert (shapes.render(bigger[None], size)[0].sum(-1) > lum.mean()).sum() > len(xs)
  assert len(np.unique(lum)) > 10  # anti-aliased edges, stripes, outline: not two levels
  # The disc shows its rotation through its stripes.
  turned = base.copy()
  turned[6] = np.pi  # a quarter turn (the angle is stored doubled)
  assert not np.array_equal(shapes.render(turned[None], size)[0], img.astype(np.uint8))
  half = base.copy()
  half[6] = 2 * np.pi - 1e-6  # a half turn: the same picture
  np.testing.assert_allclose(shapes.render(half[None], size)[0], img, atol=2)


def test_npz_factors_follow_their_images(tmp_path, tiny_config):
  ims = _pixels(n=30)
  f = np.stack([np.arange(30) % 3, np.linspace(0, 6, 30), np.arange(30) * 0.5], 1)
  names, kinds = np.array(["c", "a", "v"]), np.array(["categorical", "circular", "continuous"])
  np.savez(tmp_path / "f.npz", image=ims, factors=f, factor_names=names, factor_kinds=kinds)
  s = sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "f.npz")))
  for split in s.values():
    assert split.factors.names == ("c", "a", "v") and split.factors.kinds == tuple(kinds)
    rows = split.arrays()["index"]
    np.testing.assert_allclose(split.factors.values, f[rows], rtol=1e-6)


@pytest.mark.parametrize(
  "change,msg",
  [
    (dict(factors=np.zeros((29, 2))), r"shape \(29, 2\); expected \[30, K\]"),
    (dict(factor_kinds=np.array(["continuous", "angle"])), "unknown factor kind 'angle'"),
    (dict(factors=np.array([[0.0, np.nan]] * 30)), "factor 'b' holds non-finite values"),
    (dict(factor_names=np.array(["a"])), "2 factor columns but 1 factor_names"),
    (dict(factor_names=np.array(["a", "a"])), "must be unique"),
    (
      dict(factor_kinds=np.array(["categorical", "continuous"]), factors=np.full((30, 2), 0.5)),
      "categorical factor 'a' must hold class indices",
    ),
    (dict(factor_names=None), r"needs `factor_names` \[K\] and `factor_kinds`"),
  ],
)
def test_npz_bad_factors_are_named(tmp_path, tiny_config, change, msg):
  arrays = dict(
    image=_pixels(n=30),
    factors=np.zeros((30, 2)),
    factor_names=np.array(["a", "b"]),
    factor_kinds=np.array(["continuous", "circular"]),
  )
  arrays.update(change)
  np.savez(tmp_path / "b.npz", **{k: v for k, v in arrays.items() if v is not None})
  with pytest.raises(DataError, match=msg):
    sources.load_splits(_cfg(tiny_config, source="npz", path=str(tmp_path / "b.npz")))


def test_unknown_source(tiny_config):
  with pytest.raises(ConfigError, match="not one of"):
    sources.load_splits(_cfg(tiny_config, source="csv"))


def test_folder_with_class_subfolders(tmp_path, tiny_config):
  ims = _pixels(n=12, h=7, w=7, c=3)
  for i, im in enumerate(ims):
    d = tmp_path / f"class_{i % 3}"
    d.mkdir(exist_ok=True)
    Image.fromarray(im).save(d / f"{i}.png")
  s = sources.load_splits(_cfg(tiny_config, source="folder", path=str(tmp_path)))
  assert s["train"].image_shape == (7, 7, 3) and s["train"].has_labels
  labels = s["train"].arrays()["label"]
  assert set(labels.tolist()) <= {0, 1, 2}


def test_folder_resizes_or_names_the_odd_image(tmp_path, tiny_config):
  for i, im in enumerate(_pixels(n=6, h=8, w=8)):
    Image.fromarray(im[..., 0]).save(tmp_path / f"{i}.png")
  Image.fromarray(_pixels(n=1, h=5, w=5)[0, ..., 0]).save(tmp_path / "odd.png")
  s = sources.load_splits(_cfg(tiny_config, source="folder", path=str(tmp_path)))
  with pytest.raises(DataError, match="odd.png"):
    [s[k][i] for k in ("train", "test") for i in range(len(s[k]))]
  s = sources.load_splits(_cfg(tiny_config, source="folder", path=str(tmp_path), image_size=4))
  assert s["train"][0]["image"].shape == (4, 4, 1)


def test_empty_folder(tmp_path, tiny_config):
  with pytest.raises(DataError, match="empty"):
    sources.load_splits(_cfg(tiny_config, source="folder", path=str(tmp_path)))


def _write_array_record(path, images, labels):
  import io

  from array_record.python import array_record_module

  from vdae.data.tf_example import Example

  w = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
  for im, lb in zip(images, labels):
    buf = io.BytesIO()
    Image.fromarray(im[..., 0]).save(buf, format="PNG")
    ex = Example()
    ex.features.feature["image"].bytes_list.value.append(buf.getvalue())
    ex.features.feature["label"].int64_list.value.append(int(lb))
    w.write(ex.SerializeToString())
  w.close()


def test_array_record_tfds_layout(tmp_path, tiny_config):
  ims = _pixels(n=10, h=6, w=6)
  _write_array_record(tmp_path / "ds-train.array_record-00000-of-00001", ims, np.arange(10) % 4)
  _write_array_record(tmp_path / "ds-test.array_record-00000-of-00001", ims[:3], [1, 2, 3])
  cfg = _cfg(tiny_config, source="array_record", path=str(tmp_path / "ds-train.array_record*"))
  s = sources.load_splits(cfg)
  assert len(s["train"]) == 10 and len(s["test"]) == 3
  item = s["train"][4]
  assert int(item["label"]) == 0
  np.testing.assert_allclose(item["image"], ims[4] / 127.5 - 1, atol=1e-6)
  with pytest.raises(DataError, match="matches no files"):
    sources.load_splits(_cfg(tiny_config, source="array_record", path=str(tmp_path / "x*")))


def test_batches_are_process_blocks_of_the_global_batch(tiny_config):
  """2 processes' batches, side by side, equal the 1-process global batch."""
  split = sources.load_splits(tiny_config.data)["train"]
  one = iter(pipeline.train_dataset(split, tiny_config.data, 8, 0, 1))
  p0 = iter(pipeline.train_dataset(split, tiny_config.data, 8, 0, 2))
  p1 = iter(pipeline.train_dataset(split, tiny_config.data, 8, 1, 2))
  for _ in range(3):
    g = next(one)["index"]
    np.testing.assert_array_equal(g, np.concatenate([next(p0)["index"], next(p1)["index"]]))
  with pytest.raises(ConfigError, match="divisible"):
    pipeline.train_dataset(split, tiny_config.data, 9, 0, 2)


def test_epochs_reshuffle_and_cover_the_split(tmp_path, tiny_config):
  np.savez(tmp_path / "d.npz", images=_pixels(n=40))
  cfg = _cfg(tiny_config, source="npz", path=str(tmp_path / "d.npz"))
  split = sources.load_splits(cfg)["train"]
  it = iter(pipeline.train_dataset(split, cfg, len(split), 0, 1))
  e1, e2 = next(it)["index"], next(it)["index"]
  assert sorted(e1.tolist()) == sorted(split.rows.tolist())  # index = row in the source
  assert sorted(e2.tolist()) == sorted(split.rows.tolist())
  assert not np.array_equal(e1, e2)
  assert os.path.exists(tmp_path / "d.npz")


def test_random_flip_mirrors_about_half_the_images_of_a_batch(tiny_config):
  cfg = tiny_config.data
  cfg.random_flip = True
  split = sources.load_splits(cfg)["train"]
  batch = next(iter(pipeline.train_dataset(split, cfg, 64, 0, 1)))
  position = {int(r): i for i, r in enumerate(split.rows if split.rows is not None else [])}
  mirrored = 0
  for image, row in zip(batch["image"], batch["index"], strict=True):
    original = split[position.get(int(row), int(row))]["image"]
    if np.array_equal(image, original[:, ::-1]) and not np.array_equal(image, original):
      mirrored += 1
    else:
      np.testing.assert_array_equal(image, original)
  assert 16 <= mirrored <= 48
