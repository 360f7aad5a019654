"""Code text names what exists: every repository path a comment or docstring of vdae/,
configs/, launch/, tests/ or .ci/ names (a .py, .sh, .md or .json file) is there."""

from __future__ import annotations

import ast
import io
import pathlib
import re
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[2]
PATH = re.compile(
  r"(?<![\w/.~$-])((?:vdae|configs|tests|launch|docs|\.ci)/[\w./-]*\.(?:py|sh|md|json))\b"
)


def _python_text(path: pathlib.Path) -> str:
  """Its comments and docstrings (strings the code uses are not claims about the tree)."""
  src = path.read_text()
  parts = [
    t.string
    for t in tokenize.generate_tokens(io.StringIO(src).readline)
    if t.type == tokenize.COMMENT
  ]
  for node in ast.walk(ast.parse(src)):
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
      parts.append(ast.get_docstring(node) or "")
  return "\n".join(parts)


def _shell_comments(path: pathlib.Path) -> str:
  return "\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#"))


def _named_paths() -> dict[str, set[str]]:
  out = {}
  for top in ("vdae", "configs", "launch", "tests", ".ci"):
    for f in (ROOT / top).rglob("*"):
      if f.suffix == ".py":
        text = _python_text(f)
      elif f.suffix == ".sh" or (f.parent.name == ".ci" and f.is_file()):
        text = _shell_comments(f)
      else:
        continue
      out[str(f.relative_to(ROOT))] = set(PATH.findall(text))
  return out


def test_the_scan_reads_comments_and_docstrings():
  named = _named_paths()
  stages = named["vdae/training/stages/__init__.py"]
  assert "vdae/io/pretrained.py" in named["configs/cifar10_ddpm.py"] | stages
  assert len(named) > 100


def test_every_named_path_exists():
  missing = {
    src: sorted(p for p in paths if not (ROOT / p).exists())
    for src, paths in _named_paths().items()
  }
  missing = {k: v for k, v in missing.items() if v}
  assert not missing, f"comments or docstrings name paths that do not exist: {missing}"
