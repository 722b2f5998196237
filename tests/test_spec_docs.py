"""docs/specs.md: its >>> examples run as written (from the repository root, as a reader would)."""

from __future__ import annotations

import doctest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_specs_page_examples_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = doctest.testfile(str(ROOT / "docs" / "specs.md"), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15
    assert result.failed == 0


def test_readme_links_the_specs_page():
    assert "[docs/specs.md](docs/specs.md)" in (ROOT / "README.md").read_text()
