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


def _checkpoint(workdir, stage: str, step: int, meta: str = "{}") -> None:
  d = workdir / stage / "checkpoints" / str(step) / "meta"
  d.mkdir(parents=True)
  (d / "metadata").write_text(meta)


def test_a_retrained_stage_changes_the_keys_of_the_models_that_read_it_only(tmp_path, tiny_config):
  """evaluate.model_store keys each model by the checkpoints it reads: a VAE checkpoint
  at a new step invalidates the VAE's, SDEdit's and the refiner's parts, not the VDAE's;
  the same step with other recorded metadata (another config) counts as changed too."""
  from vdae.autoencoders.registry import AUTOENCODERS
  from vdae.commands import evaluate

  for stage in ("stage1", "stage2", "vae", "refiner"):
    _checkpoint(tmp_path, stage, 4)
  base = parts.Store(str(tmp_path / "eval" / "parts"), {"config": {}, "judge": "j"})

  def keys():
    return {
      name: evaluate.model_store(base, name, e.reads, tiny_config, str(tmp_path)).key
      for name, e in AUTOENCODERS.items()
    }

  before = keys()
  assert len(set(before.values())) == 4
  _checkpoint(tmp_path, "vae", 8)
  after = keys()
  assert {n for n in before if before[n] != after[n]} == {"vae", "sdedit_vae", "refined_vae"}
  _checkpoint(tmp_path, "prior", 4)  # the VDAE samples from its learned prior once trained
  again = keys()
  assert {n for n in after if after[n] != again[n]} == {"vdae"}
  other = tmp_path / "other"
  for stage in ("stage1", "stage2", "vae", "refiner"):
    _checkpoint(other, stage, 4, meta='{"config": "another"}' if stage == "stage1" else "{}")
  moved = {
    name: evaluate.model_store(base, name, e.reads, tiny_config, str(other)).key
    for name, e in AUTOENCODERS.items()
  }
  assert {n for n in before if before[n] != moved[n]} == {"sdedit_vae", "vdae"}
