"""Kept evaluation parts (vdae/evaluation/parts.py): reused only under the same key,
whole or not at all."""

import os

import numpy as np
import pytest

from vdae.evaluation import parts

pytestmark = pytest.mark.timeout(60)


def test_a_part_is_reused_under_its_key_only(tmp_path):
  store = parts.Store(str(tmp_path), {"config": {"seed": 0}, "judge": "j"})
  assert store.load("vdae") is None
  arrays = {"rec.mean": np.arange(6, dtype=np.float32).reshape(2, 3), "samples": np.ones(2)}
  store.save("vdae", {"vdae/mean/l2": 1.5, "vdae/x": float("nan")}, arrays)
  values, got = store.load("vdae")
  assert values["vdae/mean/l2"] == 1.5 and np.isnan(values["vdae/x"])
  np.testing.assert_array_equal(got["rec.mean"], arrays["rec.mean"])
  # The same inputs in another order: the same key. Any other input: computed again.
  assert parts.Store(str(tmp_path), {"judge": "j", "config": {"seed": 0}}).load("vdae")
  assert parts.Store(str(tmp_path), {"config": {"seed": 1}, "judge": "j"}).load("vdae") is None
  assert store.child(stages={"stage2": "2000:ab"}).load("vdae") is None
  assert store.load("vae") is None
  # A slash in a name stays inside the directory.
  store.save("vdae/neg_elbo_bits_per_dim/batch0", {"bpd": [1.0]})
  assert store.load("vdae/neg_elbo_bits_per_dim/batch0")[0] == {"bpd": [1.0]}
  assert sorted(os.listdir(tmp_path)) == [
    "vdae.json",
    "vdae.neg_elbo_bits_per_dim.batch0.json",
    "vdae.npz",
  ]


def test_a_damaged_part_is_computed_again(tmp_path):
  store = parts.Store(str(tmp_path), {"a": 1})
  store.save("m", {"k": 1.0}, {"samples": np.zeros(3)})
  (tmp_path / "m.json").write_text('{"key": ')  # cut short
  assert store.load("m") is None
  store.save("m", {"k": 1.0}, {"samples": np.zeros(3)})
  (tmp_path / "m.npz").unlink()  # arrays lost: the JSON alone is not the part
  assert store.load("m") is None


def test_nowhere_keeps_nothing():
  store = parts.Nowhere()
  store.save("m", {"k": 1.0})
  assert store.load("m") is None
