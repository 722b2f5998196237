"""The README's 30-second tour runs as written, and prints what its lines say."""

from __future__ import annotations

import re
from pathlib import Path

from doctest_runner import from_text, run
from helpers import ROOT

README = ROOT / "README.md"


def test_readme_opens_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_examples_give_their_outputs(tmp_path):
    test = from_text(README)
    assert len(test.examples) > 20 and sum(bool(e.want) for e in test.examples) > 10  # outputs are checked
    failures = run(test, tmp_path)
    assert not failures, failures
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "runs/run1/config.json").is_file()
