"""Specs: the tutorial's compositions as data, built and checked against hand-built torch modules."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

import torchsmith as ts
from torchsmith.spec import GraphModel, LayerDict, LayerList
from helpers import SPECS



def leaf_census(model: nn.Module) -> Counter:
    """Leaf modules by class name, counted here independently of torchsmith.spec.census."""
    return Counter(type(m).__name__ for m in model.modules() if len(m._modules) == 0)


# the tutorial's sequentials


def test_conv_stack_named_children_and_shape():
    model = ts.build(SPECS / "conv_stack.yaml")
    assert [n for n, _ in model.named_children()] == ["conv1", "relu1", "conv2", "relu2"]
    assert isinstance(model, nn.Sequential)
    assert (model.conv2.in_channels, model.conv2.out_channels, model.conv2.kernel_size) == (20, 64, (5, 5))  # auto -> 20
    reference = nn.Sequential(nn.Conv2d(3, 20, 5), nn.ReLU(), nn.Conv2d(20, 64, 5), nn.ReLU())
    reference.load_state_dict({k.replace("conv1", "0").replace("conv2", "2"): v for k, v in model.state_dict().items()})
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 64, 224 - 4 - 4, 224 - 4 - 4)
        assert torch.equal(out, reference(x))
    assert sum(p.numel() for p in model.parameters()) == (3 * 25 * 20 + 20) + (20 * 25 * 64 + 64)


def test_conv_stack_positional_children():
    model = ts.build(SPECS / "conv_stack_positional.yaml")
    assert [n for n, _ in model.named_children()] == ["0", "1", "2", "3"]
    assert [type(m) for m in model] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    assert model(torch.rand(1, 3, 224, 224)).shape == (1, 64, 216, 216)


def test_inline_yaml_json_dict_and_path_give_the_same_model(tmp_path):
    as_dict = {"layers": {"conv1": {"Conv2d": [3, 20, 5]}, "relu1": "ReLU"}}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(as_dict))
    texts = [as_dict, json.dumps(as_dict), "layers:\n  conv1: {Conv2d: [3, 20, 5]}\n  relu1: ReLU\n", path, str(path)]
    for spec in texts:
        m = ts.build(spec)
        assert [(n, type(c)) for n, c in m.named_children()] == [("conv1", nn.Conv2d), ("relu1", nn.ReLU)]


def test_mlp_matches_the_tutorial_and_the_zoo():
    model = ts.build(SPECS / "mlp.yaml")
    assert [(n, type(c)) for n, c in model.named_children()] == [("hidden", nn.Linear), ("act", nn.ReLU), ("output", nn.Linear)]
    assert sum(p.numel() for p in model.parameters()) == 784 * 256 + 256 + 256 * 10 + 10
    x = torch.rand(4, 784)
    expected = torch.relu(x @ model.hidden.weight.T + model.hidden.bias) @ model.output.weight.T + model.output.bias
    torch.testing.assert_close(model(x), expected)


def test_list_composition_is_an_indexable_module_list():
    model = ts.build(SPECS / "mlp_list.yaml")
    assert isinstance(model, nn.ModuleList) and isinstance(model, LayerList) and len(model) == 3
    x = torch.rand(2, 784)
    by_hand = x
    for i in range(len(model)):  # the tutorial's use: index, then call
        by_hand = model[i](by_hand)
    assert torch.equal(model(x), by_hand)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_dict_composition_keeps_order_and_takes_a_layer_by_key():
    model = ts.build(SPECS / "mlp_dict.yaml")
    assert isinstance(model, nn.ModuleDict) and isinstance(model, LayerDict)
    assert list(model.keys()) == ["linear", "act", "output"]
    model["extra"] = nn.Linear(10, 3)  # added by key after construction, as the tutorial does
    x = torch.rand(2, 784)
    expected = model["extra"](model["output"](torch.relu(model["linear"](x))))
    assert torch.equal(model(x), expected)


def test_module_containers_nest_and_repeat():
    spec = {
        "input": [2, 8, 16, 16],
        "layers": {
            "body": {"Sequential": {"conv": {"Conv2d": {"args": ["auto", 8, 3], "padding": 1}}, "bn": {"BatchNorm2d": "auto"}, "act": "ReLU"}, "repeat": 3},
            "pool": {"AdaptiveAvgPool2d": 1},
            "flat": "Flatten",
            "heads": {"ModuleList": [{"Linear": ["auto", 4]}]},
        },
    }
    model = ts.build(spec)
    assert len(model.body) == 3 and all(isinstance(b, nn.Sequential) for b in model.body)
    assert model.body[1] is not model.body[0] and model.body[2].conv.in_channels == 8
    assert model.body[0].bn.num_features == 8 and model.heads[0].in_features == 8
    assert "body.2.conv.weight" in model.state_dict()
    assert model(torch.rand(2, 8, 16, 16)).shape == (2, 4)


def test_auto_widths_follow_the_shape_reaching_each_layer():
    spec = {
        "input": [1, 3, 32, 32],
        "layers": [{"Conv2d": ["auto", 8, 3]}, {"BatchNorm2d": "auto"}, "Flatten", {"Linear": {"in_features": "auto", "out_features": 10}}],
    }
    model = ts.build(spec)
    assert model[0].in_channels == 3 and model[1].num_features == 8
    assert model[3].in_features == 8 * 30 * 30  # nobody computes 64*216*216 by hand
    # input_size overrides the spec's input, and auto follows it
    assert ts.build(spec, input_size=(1, 3, 20, 20))[3].in_features == 8 * 18 * 18


def test_torch_nn_layers_take_keywords_and_scalar_shorthand():
    model = ts.build({"layers": [{"Conv2d": {"args": [3, 4, 3], "stride": 2, "padding": 1, "bias": False}}, {"LeakyReLU": 0.2}, {"Dropout": {"p": 0.1}}]})
    conv, act, drop = model
    assert (conv.stride, conv.padding, conv.bias) == ((2, 2), (1, 1), None)
    assert act.negative_slope == 0.2 and drop.p == 0.1


def test_zoo_models_by_name_with_keywords():
    model = ts.build({"model": {"resnet18": {"num_classes": 7}}})
    zoo = ts.create_model("resnet18", num_classes=7)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in zoo.state_dict().items()]
    backbone_then_head = ts.build({"input": [1, 3, 64, 64], "layers": {"body": {"resnet18": {"num_classes": 0}}, "head": {"Linear": ["auto", 5]}}})
    assert backbone_then_head.head.in_features == 512


def test_registered_block_with_auto():
    @ts.register_block(name="test_spec_ConvBNAct")
    class ConvBNAct(nn.Sequential):
        def __init__(self, in_channels: int, out_channels: int, *, act: str = "relu"):
            super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU())

    model = ts.build({"input": [1, 3, 8, 8], "layers": [{"test_spec_ConvBNAct": ["auto", 16]}, {"test_spec_ConvBNAct": {"args": ["auto", 4]}}]})
    assert isinstance(model[0], ConvBNAct) and model[1][0].in_channels == 16
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ts.DuplicateModelError, match="already"):
        ts.register_block(ConvBNAct, name="test_spec_ConvBNAct")
    with pytest.raises(ts.DuplicateModelError, match="torch.nn.Conv2d"):
        ts.register_block(ConvBNAct, name="Conv2d")


# graphs


def test_graph_merge_ops_against_hand_computation():
    spec = {
        "input": {"x": [2, 4], "y": [2, 4]},
        "graph": {
            "inputs": ["x", "y"],
            "nodes": {
                "fx": {"Linear": ["auto", 4], "from": "x"},
                "fy": {"Linear": ["auto", 4], "from": "y"},
                "sum": {"add": None, "from": ["fx", "fy", "x"]},
                "prod": {"multiply": None, "from": ["fx", "fy"]},
                "cat": {"concat": {"dim": 1}, "from": ["sum", "prod"]},
                "out": {"Linear": ["auto", 3]},
            },
            "outputs": {"logits": "out", "features": "cat"},
        },
    }
    model = ts.build(spec)
    assert isinstance(model, GraphModel) and model.out.in_features == 8
    x, y = torch.rand(2, 4), torch.rand(2, 4)
    fx, fy = model.fx(x), model.fy(y)
    cat = torch.cat([fx + fy + x, fx * fy], dim=1)
    got = model(x, y=y)
    assert set(got) == {"logits", "features"}
    assert torch.equal(got["features"], cat) and torch.equal(got["logits"], model.out(cat))


def test_graph_outputs_list_and_nesting_in_a_sequential():
    residual = {"Graph": {"nodes": {"fc": {"Linear": [6, 6]}, "act": "ReLU", "res": {"add": None, "from": ["act", "input"]}}}}
    model = ts.build({"layers": {"block": residual, "head": {"Linear": [6, 2]}}})
    x = torch.rand(3, 6)
    assert torch.equal(model(x), model.head(torch.relu(model.block.fc(x)) + x))
    multi = ts.build({"graph": {"nodes": {"a": {"Linear": [2, 2]}, "b": "Tanh"}, "outputs": ["a", "b"]}})
    out = multi(torch.rand(1, 2))
    assert list(out) == ["a", "b"] and torch.equal(out["b"], torch.tanh(out["a"]))


@pytest.fixture(scope="module")
def unets() -> tuple[nn.Module, nn.Module]:
    """The spec U-Net, built from examples/specs/unet.yaml, and the zoo U-Net (random init each)."""
    return ts.build(SPECS / "unet.yaml").eval(), ts.create_model("unet").eval()


def test_unet_spec_equals_the_zoo_unet(unets):
    spec_unet, zoo = unets
    assert not torch.equal(spec_unet.stem[0].weight, zoo.stem[0].weight)  # the equality below comes from loading
    assert sum(p.numel() for p in spec_unet.parameters()) == 32_090_627
    assert leaf_census(spec_unet) == leaf_census(zoo)
    assert list(spec_unet.state_dict()) == list(zoo.state_dict())
    report = spec_unet.load_state_dict(zoo.state_dict(), strict=True)  # no renaming
    assert not report.missing_keys and not report.unexpected_keys
    torch.manual_seed(0)
    with torch.no_grad():
        for shape in [(1, 3, 32, 32), (2, 3, 37, 53), (1, 3, 16, 16), (1, 3, 50, 17)]:  # several not divisible by 16
            x = torch.rand(shape)
            out = spec_unet(x)
            assert out.shape == shape
            assert torch.equal(out, zoo(x)), shape


# round trip through the registry's config


def test_to_spec_of_a_spec_model_rebuilds_the_same_structure():
    model = ts.build(SPECS / "fpn_top_down.yaml")
    spec = ts.to_spec(model)
    assert spec["name"] == "fpn_top_down" and "graph" in spec
    again = ts.build(spec)
    assert [(k, v.shape) for k, v in again.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
    spec["name"] = "changed"  # a copy: the model's record is untouched
    assert ts.to_spec(model)["name"] == "fpn_top_down"


def test_to_spec_of_a_registry_model():
    from torchsmith.layers import FrozenBatchNorm2d

    zoo = ts.create_model("resnet18", num_classes=3, norm_layer=FrozenBatchNorm2d)
    spec = ts.to_spec(zoo)
    assert spec == {"model": {"resnet18": {"num_classes": 3, "norm_layer": "frozen_bn"}}}
    rebuilt = ts.build(spec)
    assert isinstance(rebuilt.bn1, FrozenBatchNorm2d)
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [(k, v.shape) for k, v in zoo.state_dict().items()]
    with pytest.raises(ts.SpecError, match="neither from a spec nor through the registry"):
        ts.to_spec(nn.Linear(2, 2))


def test_build_on_meta_costs_no_memory():
    model = ts.build(SPECS / "unet.yaml", device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 32_090_627


def test_features_of_the_spec_unet_equal_the_zoo_unets(unets):
    spec_unet, zoo = unets
    spec_unet.load_state_dict(zoo.state_dict())
    nodes = {"encoder.3": "bottleneck", "decoder.3": "last"}
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        got, expected = ts.extract_features(spec_unet, nodes)(x), ts.extract_features(zoo, nodes)(x)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_graph_inputs_by_name_and_input_size_override():
    spec = {
        "graph": {
            "inputs": ["image", "extra"],
            "nodes": {"feat": {"Flatten": None, "from": "image"}, "cat": {"concat": {"dim": 1}, "from": ["feat", "extra"]}, "fc": {"Linear": ["auto", 2]}},
        }
    }
    model = ts.build(spec, input_size={"image": (1, 2, 3, 3), "extra": (1, 1)})
    assert model.fc.in_features == 2 * 3 * 3 + 1
    assert ts.to_spec(model)["input"] == {"image": [1, 2, 3, 3], "extra": [1, 1]}  # recorded, so load_model can infer again
    image, extra = torch.rand(4, 2, 3, 3), torch.rand(4, 1)
    assert torch.equal(model(image, extra), model(extra=extra, image=image))
    with pytest.raises(TypeError, match="takes the inputs"):
        model(image)


@pytest.mark.slow
def test_a_spec_graph_exports_with_torch_export():
    model = ts.build(SPECS / "fpn_top_down.yaml").eval()
    x = torch.rand(1, 3, 32, 32)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        got, expected = exported(x), model(x)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_a_spec_graph_traces_with_torch_fx():
    model = ts.build(SPECS / "fpn_top_down.yaml").eval()
    traced = torch.fx.symbolic_trace(model)
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert {"c2.0", "lat4", "p2"} <= called  # module nodes by their dotted names
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got, expected = traced(x), model(x)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
