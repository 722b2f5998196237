"""Run ``>>>`` examples (docstrings, docs pages, the README) the one way: ELLIPSIS and NORMALIZE_WHITESPACE,
torch and the public API in scope, a fixed seed, in a temporary working directory (examples that write files),
offline, with an empty torch hub cache of their own (TORCH_HOME in that directory): no example needs the network."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import torch
from torch import nn

import torchsmith
from torchsmith import steps as _steps
from torchsmith.pretrained import restore_table, table_state
from torchsmith.registry import _REGISTRY
from torchsmith.spec import names as _spec_names

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def namespace() -> dict:
    """What every example may use without importing it: torch, nn, ts and the public names."""
    return {"torch": torch, "nn": nn, "ts": torchsmith, **{n: getattr(torchsmith, n) for n in torchsmith.__all__}}


def run(test: doctest.DocTest, workdir: Path, options: int = OPTIONS) -> str:
    """Run one DocTest in ``workdir``; the failure report, or "" when every example gives its output.

    ``options``: doctest's flags (``doctest.ELLIPSIS`` alone compares printed tables space for space).

    Models, spec blocks, graph ops, recorded operations and pretrained weights an example registers are
    unregistered afterwards.
    """
    test.globs = {**namespace(), **test.globs}
    runner = doctest.DocTestRunner(optionflags=options)
    out: list[str] = []
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    registered = dict(_REGISTRY)
    blocks, ops, steps = dict(_spec_names._BLOCKS), dict(_spec_names._OPS), dict(_steps._OPS)
    weights = table_state()
    env = {k: os.environ.get(k) for k in ("TORCH_HOME", "TORCHSMITH_OFFLINE")}
    os.environ.update(TORCH_HOME=str(Path(workdir) / "torch-home"), TORCHSMITH_OFFLINE="1")
    torch.manual_seed(0)
    os.chdir(workdir)
    try:
        runner.run(test, out=out.append, clear_globs=True)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        _REGISTRY.clear()
        _REGISTRY.update(registered)
        for table, saved in ((_spec_names._BLOCKS, blocks), (_spec_names._OPS, ops), (_steps._OPS, steps)):
            table.clear()
            table.update(saved)
        restore_table(weights)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return "".join(out) if runner.failures else ""


def from_text(path: Path) -> doctest.DocTest:
    """The ``>>>`` examples of a Markdown page, as one DocTest (state carries from block to block).

    Code fences become blank lines, so an expected output ends where its block ends (line numbers kept).
    """
    text = "\n".join("" if line.startswith("```") else line for line in path.read_text().splitlines())
    return doctest.DocTestParser().get_doctest(text, {}, path.name, str(path), 0)
