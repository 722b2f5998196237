"""Golden files for the short tables a REPL shows (``repr``), the refused load's message and the CLI's ``diff``:
a change in what a newcomer sees shows as a diff of the text. Paths are written as ``DIR``.

Regenerate after an intended change with ``TORCHSMITH_UPDATE_GOLDEN=1 pytest tests/test_display_golden.py``
and review the diff. What each text must say (counts, caps, escaping) is asserted in tests/test_display.py,
tests/checkpoint/test_checkpoint_messages.py and tests/checkpoint/test_checkpoint_cli.py against hooks and
state dicts; these files pin the layout.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import GOLDEN
from torch import nn
from typer.testing import CliRunner

import torchsmith as ts
from torchsmith.cli import app


def summary_repr(tmp_path):
    return repr(ts.summary(ts.create_model("resnet50"), (1, 3, 224, 224)))


def trace_repr(tmp_path):
    return repr(ts.trace(ts.create_model("resnet18").eval(), torch.randn(1, 3, 64, 64), file=None))


def load_report_repr(tmp_path):
    ts.save_weights(ts.create_model("resnet34"), tmp_path / "r34.safetensors")
    return repr(ts.load_weights(ts.create_model("resnet18"), tmp_path / "r34.safetensors", strict=False,
                                skip_mismatched=True))


def wrong_model_message(tmp_path):
    path = ts.save_weights(ts.create_model("resnet152"), tmp_path / "r152.safetensors")
    with pytest.raises(ts.IncompatibleCheckpointError) as caught:
        ts.load_weights(ts.create_model("resnet50"), path)
    return str(caught.value)


def checkpoint_info_repr(tmp_path):
    return repr(ts.inspect_checkpoint(ts.save_weights(ts.create_model("resnet18"), tmp_path / "r18.safetensors")))


def cli_diff(tmp_path):
    ts.save_weights(ts.create_model("resnet18"), tmp_path / "a.safetensors")
    ts.save_weights(nn.DataParallel(ts.create_model("resnet34")), tmp_path / "b.pt")
    result = CliRunner().invoke(app, ["diff", str(tmp_path / "a.safetensors"), str(tmp_path / "b.pt")],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 3, result.output  # they differ
    return result.stdout


CASES = {
    "repr_summary_resnet50.txt": summary_repr,
    "repr_trace_resnet18.txt": trace_repr,
    "repr_load_report_resnet34_into_resnet18.txt": load_report_repr,
    "message_resnet152_into_resnet50.txt": wrong_model_message,
    "repr_checkpoint_info_resnet18.txt": checkpoint_info_repr,
    "cli_diff_resnet18_dataparallel_resnet34.txt": cli_diff,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_shown_text_matches_golden(name, tmp_path):
    torch.manual_seed(0)
    text = CASES[name](tmp_path).replace(str(tmp_path), "DIR")
    path = GOLDEN / name
    if os.environ.get("TORCHSMITH_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
