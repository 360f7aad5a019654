"""--mode=sample draws from the source sampling.source names."""

from __future__ import annotations

import os

import pytest

from configs import tiny
from vdae.commands import sample

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
  "source, has_stage2, want",
  [
    ("auto", False, "score"),
    ("auto", True, "encoder"),
    ("score", True, "score"),
    ("encoder", False, "encoder"),  # the VDAE's loader then says: run train_encoder first
  ],
)
def test_sample_source(source, has_stage2, want, tmp_path):
  if has_stage2:
    os.makedirs(tmp_path / "stage2" / "checkpoints" / "4")
  config = tiny.get_config()
  config.sampling.source = source
  assert sample.source(config, str(tmp_path)) == want
