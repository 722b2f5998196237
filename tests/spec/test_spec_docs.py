"""docs/specs.md is linked from the README (its >>> examples run in tests/test_examples.py)."""

from __future__ import annotations

from pathlib import Path
from helpers import ROOT



def test_readme_links_the_specs_page():
    assert "[docs/specs.md](docs/specs.md)" in (ROOT / "README.md").read_text()
