"""The surgery contract and whole-model round trips on peer models (torchvision, timm): the same rules as ours.

A peer builder registered with ``@register_model`` records its keywords like a zoo model, so the surgery
chain on it (adapt to 1 channel, new head, frozen BatchNorm, folded) saves and loads back bitwise; an
unregistered peer model is refused by ``save_model`` with the way out."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

import torchsmith as ts
from torchsmith.registry import _REGISTRY
from helpers import randomise_bn_


@pytest.fixture(scope="module", autouse=True)
def peer_builders():
    @ts.register_model(name="interop_tv_resnet18")
    def tv_resnet18(*, num_classes: int = 1000) -> nn.Module:
        return tvm.resnet18(weights=None, num_classes=num_classes)

    @ts.register_model(name="interop_timm_resnet18")
    def timm_resnet18(*, num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
        return timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans)

    yield
    for name in ("interop_tv_resnet18", "interop_timm_resnet18"):
        _REGISTRY.pop(name, None)


@pytest.mark.parametrize("name", ["interop_tv_resnet18", "interop_timm_resnet18"])
def test_surgery_chain_on_a_registered_peer_saves_and_loads_bitwise(name, tmp_path):
    model = randomise_bn_(ts.create_model(name, num_classes=7))
    assert ts.adapt_input_channels(model, 1) is model
    assert ts.replace_head(model, 3) is model
    assert ts.freeze(model, exclude=["layer4", "fc"], bn="frozen") is model
    assert ts.fold_batchnorm(model.eval()) is model
    assert [s["op"] for s in ts.model_config(model)["steps"]] == [
        "adapt_input_channels", "replace_head", "freeze", "fold_batchnorm"
    ]  # fmt: skip
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    assert list(loaded.state_dict()) == list(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))


@pytest.mark.parametrize(
    "make, head",
    [(lambda: tvm.mobilenet_v3_small(weights=None), "classifier"), (lambda: timm.create_model("resnet18"), "fc")],
    ids=["tv.mobilenet_v3_small", "timm.resnet18"],
)
def test_contract_on_unregistered_peers_in_place_and_refused_at_save(make, head, tmp_path):
    model = make().eval()
    original = copy.deepcopy(model)
    assert ts.replace_head(model, 4, input_size=(1, 3, 64, 64)) is model
    assert ts.freeze(model, exclude=[head]) is model
    report = ts.freeze_report(model)
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert ts.optimize_for_inference(model) is model and not model.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in original.modules())  # the copy kept its BatchNorm
    with pytest.raises(ts.UnsaveableModelError, match="register_model"):
        ts.save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
