"""Every ``>>>`` example in src/torchsmith and docs/ runs, once, and prints what it says (the README: test_readme.py)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest
from doctest_runner import from_text, run

import torchsmith
from helpers import ROOT

SKIP_MODULES = {"torchsmith.__main__"}  # runs the CLI on import


def docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for info in pkgutil.walk_packages(torchsmith.__path__, "torchsmith."):
        if info.name in SKIP_MODULES:
            continue
        module = importlib.import_module(info.name)
        tests += [t for t in finder.find(module) if t.examples]
    tests += [t for t in finder.find(torchsmith) if t.examples]
    return sorted({t.name: t for t in tests}.values(), key=lambda t: t.name)


DOCSTRINGS = docstring_tests()
PAGES = sorted((ROOT / "docs").glob("*.md"))
# pages whose printed tables are compared space for space (no whitespace normalising), each with the
# fewest examples it must keep (a page that lost its examples would pass with none)
EXACT_PAGES = {"inspect.md": 6}


@pytest.mark.parametrize("test", DOCSTRINGS, ids=[t.name for t in DOCSTRINGS])
def test_docstring_examples_run(test, tmp_path):
    failures = run(test, tmp_path)
    assert not failures, failures


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_page_examples_run(page, tmp_path):
    test = from_text(page)
    if page.name in EXACT_PAGES:
        assert len(test.examples) >= EXACT_PAGES[page.name], f"{page.name} has {len(test.examples)} examples"
        failures = run(test, tmp_path, options=doctest.ELLIPSIS)
    else:
        failures = run(test, tmp_path)
    assert not failures, failures


def test_the_examples_are_many():
    # a guard against collecting nothing (a moved package, a broken finder)
    assert sum(len(t.examples) for t in DOCSTRINGS) > 100
