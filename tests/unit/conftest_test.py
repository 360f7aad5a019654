"""The suite's own set-up (tests/conftest.py): pytest-xdist queues the files longest first."""

from __future__ import annotations

import os

import pytest

from tests import conftest


def test_pytest_xdist_queues_files_in_the_suites_order(request):
  """xdist's own order (files by number of tests) would leave a long file for the end."""
  if not request.config.pluginmanager.hasplugin("xdist"):
    pytest.skip("pytest-xdist is not installed")
  assert request.config.option.loadscopereorder is False


def test_every_file_named_longest_first_exists():
  """A renamed file would drop out of the order silently."""
  for path in conftest.LONGEST_FIRST:
    assert os.path.isfile(os.path.join(conftest.ROOT, path)), path
