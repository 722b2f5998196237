"""An input that does not fit the model: the message names the layer, the shapes, and what is wrong (the rank,
the channel order), and summary stops there instead of printing a table of '?'."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith.cli import main


@pytest.fixture(scope="module")
def resnet():
    return ts.create_model("resnet18").eval()


def test_a_3d_input_to_a_4d_model_says_the_rank_is_wrong(resnet):
    for run in (lambda: ts.summary(resnet, (1, 3, 224)), lambda: ts.trace(resnet, torch.randn(1, 3, 224), file=None)):
        with pytest.raises(ts.InspectError) as caught:
            run()
        message = str(caught.value)
        assert "conv1 (Conv2d) got (1, 3, 224): a 3-D input (the rank is wrong: it expects 4-D (N, 3, H, W)" in message
        assert "expects 3 input channels" not in message
    with pytest.raises(ts.InspectError, match=r"got \(3, 224\): a 2-D input \(the rank is wrong: Conv2d takes 4-D"):
        ts.summary(resnet, (3, 224))


def test_a_channels_last_input_stops_at_the_first_layer_with_the_fix(resnet):
    with pytest.raises(ts.InspectError) as caught:
        ts.summary(resnet, (1, 224, 224, 3))
    message = str(caught.value)
    assert message.startswith("summary of ResNet stopped at conv1 (Conv2d) got (1, 224, 224, 3), expects 3 input channels")
    assert "channels-last; permute it first: x.permute(0, 3, 1, 2)" in message
    x = torch.randn(1, 224, 224, 3).permute(0, 3, 1, 2)  # the fix it names works
    assert ts.summary(resnet, example_inputs=x).complete


def test_other_failures_still_give_the_partial_table():
    class Item(nn.Module):  # data-dependent: meta cannot run it, a real run can
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) * x.sum().item()

    s = ts.summary(Item(), (3, 4))
    assert not s.complete and "?" in str(s)


def test_cli_summary_of_a_channels_last_input_prints_no_table_and_no_allow_real(capsys):
    assert main(["summary", "resnet18", "--input", "1,224,224,3"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "conv1 (Conv2d) got (1, 224, 224, 3)" in err and "--allow-real" not in err
