"""Evaluation batches: one padding helper, a mask, every row once and in order."""

import numpy as np
import pytest

from vdae.data import pipeline, sources


def test_eval_batches_pad_the_last_batch_and_mask_it(tiny_config):
  split = sources.load_splits(tiny_config.data)["test"]
  batches = list(pipeline.eval_batches(split, 16, limit=40))
  assert [len(b["image"]) for b in batches] == [16, 16, 16]
  assert [int(b["valid"].sum()) for b in batches] == [16, 16, 8]
  rows = np.concatenate([b["index"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(rows, split.arrays(40)["index"])
  last = batches[-1]
  np.testing.assert_array_equal(last["image"][8:], np.repeat(last["image"][7:8], 8, 0))


def test_map_batched_drops_the_padding_and_keeps_tuples():
  x = np.arange(10, dtype=np.float32)[:, None]
  seen = []

  def fn(a, b):
    seen.append(len(a))
    return a * 2, a + b

  doubled, summed = pipeline.map_batched(fn, (x, x), 4)
  assert seen == [4, 4, 4]  # one shape: one compile
  np.testing.assert_array_equal(doubled, x * 2)
  np.testing.assert_array_equal(summed, x * 2)
  np.testing.assert_array_equal(pipeline.map_batched(lambda a: a + 1, x, 3), x + 1)


def test_pad_batch_rejects_an_oversized_batch():
  with pytest.raises(ValueError, match="cannot pad a batch of 5 rows to 4"):
    pipeline.pad_batch({"x": np.zeros((5, 2))}, 4)
