"""Golden files for the printed summary tables: a change in the output shows as a diff of the table.

Regenerate after an intended change with ``TORCHSMITH_UPDATE_GOLDEN=1 pytest tests/test_inspect_golden.py``
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from inspect_models import TinyLM

import torchsmith as ts
from helpers import GOLDEN

GOLDEN = GOLDEN

CASES = {
    "summary_resnet18.txt": lambda: ts.summary(ts.create_model("resnet18"), (1, 3, 224, 224), depth=2),
    "summary_resnet152_fpn.txt": lambda: ts.summary(ts.create_model("resnet152_fpn"), (1, 3, 224, 224), depth=2),
    "summary_unet.txt": lambda: ts.summary(ts.create_model("unet"), (1, 3, 256, 256), depth=2),
    "summary_tiny_lm.txt": lambda: ts.summary(TinyLM(), (2, 16), dtype=torch.long, mode="train", depth=3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_printed_table_matches_golden(name):
    torch.manual_seed(0)
    text = str(CASES[name]())
    path = GOLDEN / name
    if os.environ.get("TORCHSMITH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_markdown_matches_golden():
    text = ts.summary(TinyLM(), (2, 16), dtype=torch.long, mode="train").to_markdown()
    path = GOLDEN / "summary_tiny_lm.md"
    if os.environ.get("TORCHSMITH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
