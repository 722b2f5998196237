"""Spec validation: every problem listed with its path, names suggested, nothing evaluated or imported."""

from __future__ import annotations

import sys

import pytest
import torch

import torchsmith as ts


def problems(spec) -> list[str]:
    with pytest.raises(ts.SpecError) as info:
        ts.build(spec)
    err = info.value
    assert isinstance(err, ts.TorchsmithError)
    assert all(p in str(err) for p in err.problems)
    return err.problems


def test_every_problem_is_collected_with_its_path():
    got = problems(
        {
            "layers": {
                "conv1": {"Conv2d": ["x", 20, 5]},
                "relu1": "Relu",
                "conv2": {"Conv2d": [20, 64, 5], "padding": 1},
                "fc": {"Linear": {"in_feature": 3, "out_features": 2}},
            }
        }
    )
    assert got == [
        "layers.conv1.Conv2d.args[0]: expected int, got 'x'",
        "layers.relu1: unknown layer 'Relu'. Did you mean 'ReLU', 'RReLU', 'ReLU6'?",
        "layers.conv2: one layer per entry, found keys ['Conv2d', 'padding']. "
        "To pass ['padding'] as keyword arguments, write {Conv2d: {args: [...], padding: ...}}.",
        "layers.fc.Linear.in_feature: Linear has no argument 'in_feature'. Did you mean 'in_features'?",
    ]


def test_argument_types_from_the_layer_signature():
    got = problems({"layers": [{"Conv2d": {"args": [3, 4, [3, 3, 3]], "padding_mode": "zero", "bias": "yes"}}, {"Dropout": {"p": "half"}}]})
    assert "layers[0].Conv2d.args[2]: expected int or list of int, got [3, 3, 3]" in got
    assert "layers[0].Conv2d.padding_mode: expected one of 'zeros', 'reflect', 'replicate', 'circular', got 'zero'" in got
    assert "layers[0].Conv2d.bias: expected bool, got 'yes'" in got
    assert "layers[1].Dropout.p: expected float, got 'half'" in got


def test_missing_and_extra_positional_arguments():
    got = problems({"layers": [{"Conv2d": [3, 4]}, {"ReLU": [True, 1]}]})
    assert got[0].startswith("layers[0].Conv2d: Conv2d(in_channels, out_channels, kernel_size, stride=1") and "kernel_size" in got[0]
    assert got[1].startswith("layers[1].ReLU: ReLU(inplace=False): too many positional arguments")


def test_auto_needs_an_input_and_a_width_parameter():
    assert problems({"layers": [{"Linear": ["auto", 3]}]}) == [
        "layers[0].Linear.args[0]: 'auto' needs the input shape: add input: [batch, channels, ...] at the top of the spec"
    ]
    assert problems({"input": [1, 4], "layers": [{"Linear": [4, "auto"]}]}) == [
        "layers[0].Linear.args[1]: 'auto' is only for ['in_channels', 'in_features', 'num_features'], not 'out_features'"
    ]


def test_shapes_are_checked_on_meta_with_the_layer_path():
    got = problems({"input": [1, 10], "layers": {"fc": {"Linear": [11, 3]}, "out": {"Linear": ["auto", 2]}}})
    assert len(got) == 1 and got[0].startswith("layers.fc.Linear: Linear(11, 3) cannot take input of shape (1, 10)")


def test_graph_references():
    got = problems(
        {
            "graph": {
                "nodes": {
                    "a": {"Linear": [3, 3]},
                    "b": {"add": None, "from": ["a", "c"]},
                    "c": {"concat": None, "from": ["a", "aa"]},
                    "d": {"crop_like": None, "from": "a"},
                    "d.e": "ReLU",
                    "forward": "ReLU",
                },
                "outputs": "cc",
            }
        }
    )
    assert got == [
        "graph.nodes.b.from: 'c' comes after this node; a node reads only inputs and earlier nodes",
        "graph.nodes.c.from: no node or input 'aa'. Did you mean 'a'?",
        "graph.nodes.d.from: crop_like takes 2 inputs, got 1: ['a']",
        "graph.nodes.forward: 'forward' cannot name a node: use letters, digits, _ and dots between parts, and no module attribute name",
        "graph.outputs: no node 'cc'. Did you mean 'c'?",
    ]


def test_module_node_names_cannot_overlap():
    got = problems({"graph": {"nodes": {"a": {"Linear": [3, 3]}, "a.b": {"Linear": [3, 3]}}}})
    assert got == ["graph.nodes.a.b: 'a.b' and 'a' would both hold the module at 'a'"]


def test_top_level_keys_and_models():
    assert problems({"layres": ["ReLU"]}) == [
        "layres: unknown top-level key. Did you mean 'layers'?",
        "(top): a spec has exactly one of ['layers', 'graph', 'model'], found none",
    ]
    assert problems({"model": {"resnet18": {"num_clases": 3}}}) == [
        "model.resnet18.num_clases: resnet18 has no argument 'num_clases'. Did you mean 'num_classes'?"
    ]
    assert problems({"model": {"resnet5O": None}})[0].startswith("model.resnet5O: unknown layer 'resnet5O'. Did you mean 'resnet50'")
    assert problems({"model": {"resnet18": [10]}}) == [
        "model.resnet18.args: registered models take keyword arguments ({resnet18: {key: value}}), got positional [10]"
    ]


def test_ops_outside_graphs_and_devices_are_refused():
    assert problems({"layers": [{"concat": None}]})[0].startswith("layers[0].concat: 'concat' is a graph op: use it in a graph node")
    assert problems({"layers": [{"Linear": {"args": [2, 2], "device": "cuda"}}]}) == [
        "layers[0].Linear.device: device is not set in a spec; move the built model with .to()"
    ]


def test_construction_errors_of_every_layer_are_collected():
    got = problems({"layers": [{"Conv2d": {"args": [3, 4, 3], "groups": 2}}, "ReLU", {"Conv2d": [4, 4, 3, 1, "sideways"]}]})
    assert len(got) == 2
    assert got[0].startswith("layers[0].Conv2d: Conv2d(3, 4, 3, groups=2) failed: ValueError: in_channels must be divisible by groups")
    assert got[1].startswith("layers[2].Conv2d: Conv2d(4, 4, 3, 1, 'sideways') failed: ValueError")


@pytest.mark.parametrize(
    "name",
    ["os.system", "torch.nn.Conv2d", "nn.Conv2d", "Module", "ParameterList", "LazyLinear", "eval", "__import__", "subprocess"],
)
def test_only_allowed_names_resolve(name):
    before = set(sys.modules)
    got = problems({"layers": [{name: ["echo hi"]}]})
    assert got[0].startswith(f"layers[0].{name}: unknown layer {name!r}") or got[0].startswith(f"layers[0]: unknown layer {name!r}")
    assert set(sys.modules) == before


def test_yaml_tags_that_build_objects_are_refused(tmp_path):
    sentinel = tmp_path / "ran"
    text = f"layers: !!python/object/apply:os.system ['touch {sentinel}']\n"
    with pytest.raises(ts.SpecError, match="not valid YAML"):
        ts.build(text)
    assert not sentinel.exists()


def test_plain_data_only():
    with pytest.raises(ts.SpecError, match="a spec holds only strings, numbers"):
        ts.build({"layers": [{"Linear": [torch.tensor(2), 2]}]})
    with pytest.raises(ts.SpecError, match="names are strings"):
        ts.build("layers:\n  1: ReLU\n")


def test_alias_bombs_and_self_reference_are_refused():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdef", "bcdefg")) + "layers: *g\n"
    with pytest.raises(ts.SpecError, match="more than 100,000 values"):
        ts.build(bomb)
    with pytest.raises(ts.SpecError, match="refers to itself"):
        ts.build("layers: &x [*x]\n")


def test_missing_file_and_non_mapping():
    with pytest.raises(ts.SpecError, match="No spec file at 'nope.yaml'"):
        ts.build("nope.yaml")
    with pytest.raises(ts.SpecError, match="not a mapping"):
        ts.build("- ReLU\n- Tanh\n")
    with pytest.raises(ts.SpecError, match="takes a dict, YAML/JSON text or a path"):
        ts.build(42)


def test_repeated_yaml_keys_are_refused_not_dropped():
    with pytest.raises(ts.SpecError) as info:
        ts.build("layers:\n  conv1: {Conv2d: [3, 8, 3]}\n  relu: ReLU\n  conv1: {Conv2d: [8, 8, 3]}\n")
    assert info.value.problems == ["line 4: 'conv1' is already a key at line 2"]


def test_graph_attribute_names_are_reserved():
    for name in ("graph_nodes", "_release", "forward", "training"):
        got = problems({"graph": {"nodes": {"a": "ReLU", name: "ReLU"}, "outputs": name}})
        assert got == [f"graph.nodes.{name}: {name!r} cannot name a node: use letters, digits, _ and dots between parts, and no module attribute name"]


def test_from_outside_a_graph():
    assert problems({"layers": [{"Linear": [2, 2], "from": "x"}]}) == [
        "layers[0].from: from is for graph nodes; in a sequential each layer reads the previous one"
    ]


def test_x_keys_hold_yaml_anchors():
    model = ts.build("x-conv: &conv {Conv2d: {args: [auto, 8, 3], padding: 1}}\ninput: [1, 3, 8, 8]\nlayers: [*conv, ReLU, *conv]\n")
    assert (model[0].in_channels, model[2].in_channels) == (3, 8) and model[0] is not model[2]


def test_output_keys_are_names_like_node_and_input_names():
    for key in ("<img src=x onerror=alert(1)>", "</script>", "a b", "__DATA__\u2028", ""):
        got = problems({"graph": {"inputs": ["x"], "nodes": {"a": "ReLU"}, "outputs": {key: "a", "ok": "a"}}})
        assert got == [f"graph.outputs[{key!r}]: {key!r} cannot name an output: use letters, digits and _"]
    got = problems({"graph": {"nodes": {"a": "ReLU"}, "outputs": {1: "a"}}})  # not a string: refused as the spec is read
    assert len(got) == 1 and got[0].startswith("graph.outputs") and "1" in got[0]
    model = ts.build({"graph": {"inputs": ["__DATA__"], "nodes": {"a": "ReLU"}, "outputs": {"__ELK__": "a"}}})
    assert list(model(__DATA__=torch.zeros(2))) == ["__ELK__"]  # placeholders are plain names: the page escapes them


def test_a_trailing_newline_is_not_part_of_a_name():
    # "$" in a pattern matches before a final "\n": "x\n" passed as an input, a node and an output name
    got = problems({"graph": {"inputs": ["x\n"], "nodes": {"a": {"ReLU": None, "from": "x\n"}}, "outputs": ["a"]}})
    assert got and got[0].startswith("graph.inputs: expected a list of input names")
    got = problems({"graph": {"inputs": ["x"], "nodes": {"a\n": {"ReLU": None, "from": "x"}}}})
    assert got and got[0] == f"graph.nodes.a\n: {'a' + chr(10)!r} cannot name a node: use letters, digits, _ and dots between parts, and no module attribute name"
    got = problems({"graph": {"inputs": ["x"], "nodes": {"a": {"ReLU": None, "from": "x"}}, "outputs": {"o\n": "a"}}})
    assert got == [f"graph.outputs[{'o' + chr(10)!r}]: {'o' + chr(10)!r} cannot name an output: use letters, digits and _"]
    got = problems({"layers": {"a\n": "ReLU"}})
    assert len(got) == 1 and "cannot name a child module" in got[0]
