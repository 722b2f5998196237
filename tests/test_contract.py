"""The one contract of docs/surgery.md, checked over the public API (``torchsmith.__all__``)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith import surgery

# every surgery function that changes a model, called on a fresh resnet18
CHANGES = {
    "replace_module": lambda m: ts.replace_module(m, "layer1.0.relu", ts.create_layer("GELU")),
    "replace_head": lambda m: ts.replace_head(m, 3),
    "freeze": lambda m: ts.freeze(m, bn="frozen"),
    "unfreeze": lambda m: ts.unfreeze(ts.freeze(m, bn="frozen")),
    "adapt_input_channels": lambda m: ts.adapt_input_channels(m, 1),
    "add_inputs": lambda m: ts.add_inputs(m, extra_features=2, num_classes=3),
    "fold_batchnorm": lambda m: ts.fold_batchnorm(m.eval()),
    "optimize_for_inference": lambda m: ts.optimize_for_inference(m),
}
READERS = {"get_module", "freeze_report"}  # look, never change
WRAPPERS = {"add_inputs"}  # return a new module holding the one passed


def surgery_functions() -> set[str]:
    return {n for n in surgery.__all__ if inspect.isfunction(getattr(surgery, n))}


def test_every_surgery_function_is_covered_here():
    assert surgery_functions() == set(CHANGES) | READERS
    assert set(surgery.__all__) <= set(ts.__all__)


@pytest.mark.parametrize("name", list(CHANGES))
def test_changes_happen_in_place_and_the_model_comes_back(name):
    model = ts.create_model("resnet18", num_classes=4)
    before = copy.deepcopy(model)
    out = CHANGES[name](model)
    if name in WRAPPERS:
        assert isinstance(out, nn.Module) and out is not model and out.backbone is model
    else:
        assert out is model
    changed = (
        [type(m) for m in model.modules()] != [type(m) for m in before.modules()]
        or [p.requires_grad for p in model.parameters()] != [p.requires_grad for p in before.parameters()]
        or any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
        or list(model.state_dict()) != list(before.state_dict())
        or model.training != before.training
        or name == "unfreeze"  # its change undoes the freeze before it
    )
    assert changed, f"{name} changed nothing in the model it was given"
    steps = ts.model_config(out)["steps"]
    assert steps and steps[-1]["op"] == name, "each change of structure is recorded as a step"


def test_readers_change_nothing():
    model = ts.freeze(ts.create_model("resnet18"), ["layer1"])
    before = copy.deepcopy(model)
    assert isinstance(ts.freeze_report(model), ts.FreezeReport)
    assert ts.get_module(model, "layer1.0") is model.layer1[0]
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in before.parameters()]
    assert ts.model_config(model) == ts.model_config(before)


def test_no_public_function_changes_its_return_type_by_a_flag():
    for name in ts.__all__:
        obj = getattr(ts, name)
        if inspect.isfunction(obj):
            params = inspect.signature(obj).parameters
            flags = [n for n, p in params.items() if n.startswith("return_") and isinstance(p.default, bool)]
            assert not flags, name
    assert inspect.signature(ts.load_model).return_annotation in (nn.Module, "nn.Module")


@pytest.mark.parametrize("name", ["resnet18", "mlp", "unet", "unet_resnet18"])
def test_zoo_classifiers_have_reset_classifier_beside_get_classifier(name):
    kwargs = {"unet": {"widths": (4, 8)}}.get(name, {})
    model = ts.create_model(name, **kwargs).eval()
    x = torch.randn(1, 784) if name == "mlp" else torch.randn(1, 3, 32, 32)
    assert model.reset_classifier(5) is None  # timm's signature and return
    assert model.num_classes == 5 and model(x).shape[1] == 5
    assert ts.model_config(model)["steps"][-1] == {
        "op": "replace_head", "num_classes": 5, "path": ts.surgery.modules.find_path(model, model.get_classifier())
    }  # fmt: skip
    # the step replays to the same structure
    rebuilt = ts.build_from_config(ts.model_config(model))
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
