"""add_inputs' options (relu, fuse="output": the tutorial's extra-input model exactly), the dedicated
HeadNotFoundError it falls back on, and freeze's one pinned-eval reader."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchsmith as ts
from helpers import fingerprint
from torchsmith.surgery.freeze import pinned_eval

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class TutorialModel(nn.Module):
    """The tutorial's extra-input model, written by hand: a CNN's output, ReLU, Dropout, one extra scalar per
    sample concatenated, then Linear(1000 + 1, 10)."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(1000 + 1, 10)

    def forward(self, image: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.relu(self.cnn(image)))  # (B, 1000)
        return self.fc(torch.cat([x, data], dim=1))  # (B, 1001) -> (B, 10)


def test_fuse_output_is_the_tutorial_model_exactly():
    torch.manual_seed(0)
    cnn = ts.create_model("resnet18")  # 1000 outputs, as the tutorial's resnet
    reference = TutorialModel(copy.deepcopy(cnn))
    ours = ts.add_inputs(cnn, extra_features=1, num_classes=10, fuse="output", relu=True, dropout=0.5)
    assert isinstance(cnn.fc, nn.Linear) and cnn.fc.out_features == 1000  # the head is kept: it is the backbone
    assert ours.num_features == 1000 and ours.head.in_features == 1001 and ours.drop.p == 0.5
    with torch.no_grad():
        reference.fc.load_state_dict(ours.head.state_dict())
    data = torch.randn(2, 1)
    with torch.no_grad():
        assert torch.equal(ours.eval()(X, data), reference.eval()(X, data))
        torch.manual_seed(3)
        train_ours = ours.train()(X, data)
        torch.manual_seed(3)  # the same dropout mask on both sides
        assert torch.equal(train_ours, reference.train()(X, data))
    assert ts.model_config(ours)["steps"] == [
        {"op": "add_inputs", "num_features": 1000, "extra_features": 1, "num_classes": 10, "fusion": "concat",
         "fuse": "output", "relu": True, "dropout": 0.5},
    ]  # fmt: skip


def test_relu_applies_to_the_features_before_fusion():
    """Hook reference: what goes into the old head, through ReLU, concatenated with the extra input."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    seen = []
    model[3].register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    with torch.no_grad():
        model(X)
    model[3]._forward_pre_hooks.clear()
    both = ts.add_inputs(model, extra_features=2, num_classes=3, relu=True).eval()
    assert isinstance(both.act, nn.ReLU) and seen[0].min() < 0  # the ReLU has something to do
    extra = torch.randn(2, 2)
    with torch.no_grad():
        expected = both.head(torch.cat([torch.relu(seen[0]), extra], 1))
        torch.testing.assert_close(both(X, extra), expected)


def test_relu_and_fuse_are_recorded_and_replayed():
    for fuse in ("features", "output"):
        both = ts.add_inputs(ts.create_model("mlp", in_features=12, hidden=(8,)), extra_features=2, num_classes=3,
                             fuse=fuse, relu=True, dropout=0.25)  # fmt: skip
        rebuilt = ts.build_from_config(ts.model_config(both))
        assert isinstance(rebuilt.act, nn.ReLU) and rebuilt.drop.p == 0.25
        assert rebuilt.num_features == (8 if fuse == "features" else 10)
        assert type(rebuilt.backbone.head) is type(both.backbone.head)
        assert ts.model_config(rebuilt) == ts.model_config(both)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"fuse": "logits"}, r"fuse must be 'features' or 'output', got 'logits'"),
        ({"extra_features": 0}, r"extra_features and num_classes must be >= 1, got 0 and 3"),  # was: the head already gone
        ({"fusion": "film"}, r"fusion must be 'concat' or 'add'"),
        ({"dropout": 1.5}, r"dropout must be a probability in \[0, 1\], got 1.5"),  # was: a raw ValueError
    ],
)
def test_bad_arguments_are_refused_before_anything_changes(bad, message):
    model = ts.create_model("resnet18")
    before = fingerprint(model)
    with pytest.raises(ts.SurgeryError, match=message):
        ts.add_inputs(model, **{"extra_features": 1, "num_classes": 3, **bad})
    assert fingerprint(model) == before and ts.model_config(model)["steps"] == []


def test_a_hand_edited_fuse_is_refused_at_replay():
    config = ts.model_config(ts.add_inputs(ts.create_model("mlp"), extra_features=1, num_classes=3))
    config["steps"][-1]["fuse"] = "logits"  # a hand-edited config
    with pytest.raises(ts.SurgeryError, match="'fuse' must be"):
        ts.build_from_config(config)


# a head that cannot be found: its own exception, caught by type


def test_no_head_raises_head_not_found_and_add_inputs_fuses_the_output():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # no Linear, no 1x1 conv
    with pytest.raises(ts.HeadNotFoundError, match="cannot tell the classifier") as info:
        ts.replace_head(model, 3)
    assert isinstance(info.value, ts.SurgeryError)
    both = ts.add_inputs(model, extra_features=2, num_classes=3)
    assert both.num_features == 4 and both.backbone is model


def test_a_probe_that_cannot_run_is_not_taken_for_a_missing_head():
    class NeedsTwo(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.fc(x + y)

    with pytest.raises(ts.SurgeryError) as info:
        ts.add_inputs(NeedsTwo(), extra_features=1, num_classes=2, example_inputs=torch.randn(1, 4))
    assert not isinstance(info.value, ts.HeadNotFoundError)


# freeze's pinned eval mode: one reader


def test_pinned_eval_is_freezes_pin_only():
    model = ts.freeze(ts.create_model("resnet18"), ["layer1"])
    assert pinned_eval(model.layer1[0].bn1) and not pinned_eval(model.bn1)
    model.bn1.train = lambda mode=True: model.bn1  # an instance attribute of someone else's: not freeze's pin
    assert not pinned_eval(model.bn1)
    report = ts.freeze_report(model)
    assert "bn1" not in report.bn_eval and "layer1.0.bn1" in report.bn_eval
    ts.unfreeze(model)
    assert not pinned_eval(model.layer1[0].bn1)
