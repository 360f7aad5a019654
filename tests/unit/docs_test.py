"""The documentation's commands can be typed as written: every shell block in README.md,
BUILD.md and docs/ parses (`bash -n`), the repository paths it names exist, every
`--config.group.field` the pages write is a field of configs/base.py, and every relative
link points at a file that exists."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

from configs import base

ROOT = pathlib.Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "BUILD.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(r"^```(bash|sh)\n(.*?)^```", re.S | re.M)
# A path inside the repository, as a command names it (a config may carry ":variant").
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:configs|vdae|launch|tests|docs|\.ci)/[\w./*-]*[\w*])")
CONFIG_FLAG = re.compile(r"--config\.([A-Za-z_][\w.]*[A-Za-z_\d])")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _ids(paths):
  return [str(p.relative_to(ROOT)) for p in paths]


def _blocks(page: pathlib.Path) -> list[str]:
  return [m.group(2) for m in BLOCK.finditer(page.read_text())]


def _fields(cfg, prefix="") -> set[str]:
  out = set()
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    out.add(name)
    if hasattr(value, "items"):
      out |= _fields(value, name + ".")
  return out


def test_the_pages_are_found():
  names = {p.name for p in PAGES}
  assert {"README.md", "BUILD.md", "evaluation.md", "shapes.md"} <= names
  assert sum(len(_blocks(p)) for p in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_shell_block_parses(page):
  for block in _blocks(page):
    r = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True, timeout=30)
    assert r.returncode == 0, f"{page.name}: bash -n fails on\n{block}\n{r.stderr}"


def test_bash_n_catches_a_broken_block():
  """The check above can fail: an unbalanced parenthesis, as in an unquoted tuple flag."""
  bad = "python -m vdae.main --config.loop.profile_steps=(20,30"
  r = subprocess.run(["bash", "-n"], input=bad, text=True, capture_output=True, timeout=30)
  assert r.returncode != 0


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_paths_in_shell_blocks_exist(page):
  missing = []
  for block in _blocks(page):
    for path in REPO_PATH.findall(block):
      path = path.split(":")[0]
      if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
        missing.append(path)
  assert not missing, f"{page.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_config_flags_are_fields(page):
  fields = _fields(base.get_config())
  unknown = sorted(set(CONFIG_FLAG.findall(page.read_text())) - fields)
  assert not unknown, f"{page.name} writes --config flags that are not fields: {unknown}"


def test_the_flag_check_knows_a_misspelt_field():
  fields = _fields(base.get_config())
  assert "stage2.beta_kl" in fields and "stage2.beta" not in fields


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page):
  broken = []
  for target in LINK.findall(page.read_text()):
    if re.match(r"[a-z]+://|#|mailto:", target):
      continue
    if not (page.parent / target.split("#")[0]).exists():
      broken.append(target)
  assert not broken, f"{page.name} links to files that do not exist: {broken}"
