"""replace_head with hidden layers, dropout, names and an output layer: the tutorial's named classifier in one
recorded call, equal to the head built by hand; and a head put in with replace_module, recorded as data."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith import SurgeryError, create_model, replace_head, replace_module
from torchsmith.models_io import replay_steps

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def tutorial_head(in_features: int = 2048) -> nn.Sequential:
    """The tutorial's classifier, by hand: fc1 2048 -> 128, relu1, dropout1 0.5, fc2 128 -> 10, output LogSoftmax."""
    return nn.Sequential(OrderedDict(
        fc1=nn.Linear(in_features, 128), relu1=nn.ReLU(), dropout1=nn.Dropout(0.5), fc2=nn.Linear(128, 10),
        output=nn.LogSoftmax(dim=1),
    ))  # fmt: skip


def test_the_tutorial_head_in_one_call_equals_the_hand_built_one():
    base = create_model("resnet50").eval()
    ours = replace_head(copy.deepcopy(base), 10, hidden=[128], dropout=0.5, output="LogSoftmax")
    by_hand = replace_module(copy.deepcopy(base), "fc", tutorial_head())
    assert repr(ours.fc) == repr(by_hand.fc) and ours.num_classes == 10
    by_hand.load_state_dict(ours.state_dict())  # the same keys: fc.fc1.weight, ..., fc.fc2.bias
    with torch.no_grad():
        assert torch.equal(ours.eval()(X), by_hand.eval()(X))
        assert torch.allclose(ours(X).exp().sum(1), torch.ones(2))  # log-probabilities over 10 classes
        torch.manual_seed(0)
        train_ours = ours.train()(X)
        torch.manual_seed(0)
        assert torch.equal(train_ours, by_hand.train()(X))  # the same dropout, in the same place
    assert ts.model_config(ours)["steps"] == [
        {"op": "replace_head", "num_classes": 10, "path": "fc", "hidden": [128], "dropout": 0.5, "output": "LogSoftmax"}
    ]


def test_layer_names_default_and_given():
    model = replace_head(create_model("mlp", in_features=12, hidden=(8,)), 3, hidden=[6, 5])
    assert [n for n, _ in model.head.named_children()] == ["fc1", "relu1", "fc2", "relu2", "fc3"]  # no dropout asked
    model = replace_head(model, 3, dropout=0.1, names=["drop", "classifier"])  # dropout before the only Linear
    assert [(n, type(m).__name__) for n, m in model.head.named_children()] == [("drop", "Dropout"), ("classifier", "Linear")]
    assert model.head.drop.p == 0.1 and model(torch.randn(4, 12)).shape == (4, 3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SurgeryError, match=r"names: 3 distinct names .* for the layers \['fc1', 'relu1', 'fc2'\], got \['a', 'b'\]"):
        replace_head(model, 3, hidden=[4], names=["a", "b"])
    with pytest.raises(SurgeryError, match="names: 2 distinct names"):
        replace_head(model, 3, dropout=0.2, names=["x", "x"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # refused: nothing changed
    assert repr(replace_head(model, 5).head) == "Linear(in_features=8, out_features=5, bias=True)"  # one layer again


def test_options_are_checked_and_named():
    mlp = create_model("mlp", in_features=12, hidden=(8,))
    with pytest.raises(SurgeryError, match=r"output='LogSoftMax': .*Did you mean 'LogSoftmax'"):
        replace_head(mlp, 3, output="LogSoftMax")
    with pytest.raises(SurgeryError, match=r"output='MultiheadAttention': torch.nn.MultiheadAttention is not on torchsmith's allow-list"):
        replace_head(mlp, 3, output="MultiheadAttention")
    with pytest.raises(SurgeryError, match="hidden takes positive layer widths"):
        replace_head(mlp, 3, hidden=[0])
    with pytest.raises(SurgeryError, match="dropout is a probability"):
        replace_head(mlp, 3, hidden=[4], dropout=1.5)
    with pytest.raises(SurgeryError, match="num_classes=0 leaves no classifier"):
        replace_head(mlp, 0, hidden=[4])
    with pytest.raises(SurgeryError, match="the head 'head' is a Conv2d; hidden layers, dropout, names and an output layer are for a Linear head"):
        replace_head(create_model("unet", widths=(4, 8)), 2, hidden=[4])
    assert ts.model_config(mlp)["steps"] == []


def test_an_identity_head_takes_its_width_from_num_features():
    model = replace_head(replace_head(create_model("resnet18"), 0), 4, hidden=[16], output="Sigmoid")
    assert model.fc.fc1.in_features == 512 and isinstance(model.fc.output, nn.Sigmoid)
    y = model.eval()(X)
    assert y.shape == (2, 4) and bool(((y > 0) & (y < 1)).all())


def test_a_step_written_before_the_options_still_replays():
    model = replay_steps(create_model("resnet18"), [{"op": "replace_head", "num_classes": 5, "path": "fc"}])
    assert repr(model.fc) == "Linear(in_features=512, out_features=5, bias=True)"


def test_layered_head_with_names_saves_and_loads(tmp_path):
    names = ["hidden", "act", "drop", "logits", "probs"]
    model = replace_head(create_model("resnet18"), 7, hidden=[32], dropout=0.3, names=names, output="Softmax").eval()
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m").eval()
    assert [n for n, _ in loaded.fc.named_children()] == names and loaded.fc.probs.dim == 1
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert ts.model_config(loaded) == ts.model_config(model)


def test_the_tutorial_head_by_replace_module_is_recorded_as_data():
    model = replace_module(create_model("resnet50"), "fc", tutorial_head())
    (step,) = ts.model_config(model)["steps"]
    assert step == {"op": "replace_module", "path": "fc", "spec": {"Sequential": {
        "fc1": {"Linear": {"in_features": 2048, "out_features": 128}}, "relu1": "ReLU", "dropout1": "Dropout",
        "fc2": {"Linear": {"in_features": 128, "out_features": 10}}, "output": {"LogSoftmax": {"dim": 1}}}}}  # fmt: skip
    # the spec language reads the description too
    assert repr(ts.build({"model": step["spec"]})) == repr(tutorial_head())
