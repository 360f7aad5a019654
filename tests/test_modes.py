"""--mode=sample draws from the source sampling.source names."""

from __future__ import annotations

import os

import pytest

from configs import tiny
from vdae import decode, modes, train

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
  "source, has_stage2, want",
  [
    ("auto", False, "score"),
    ("auto", True, "encoder"),
    ("score", True, "score"),
    ("encoder", False, "encoder"),  # load_encoder then says: run train_encoder first
  ],
)
def test_sample_source(source, has_stage2, want, tmp_path, monkeypatch):
  monkeypatch.setattr(train, "sample_mode", lambda config, workdir: "score")
  monkeypatch.setattr(decode, "sample_mode", lambda config, workdir: "encoder")
  if has_stage2:
    os.makedirs(tmp_path / "stage2" / "checkpoints")
  config = tiny.get_config()
  config.sampling.source = source
  assert modes.sample(config, str(tmp_path)) == want
