"""The config codec: layer names, the torch.nn allow-list, config values <-> JSON, and modules as data.

References are independent of the codec: the JSON save_model wrote before the codec existed (literals), the
modules' own forward, and torch.nn's own classes. Then the property the codec exists for: what save_model can
write, to_spec can describe, and the reverse, over the zoo and the shipped specs."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import torchsmith as ts
from helpers import SPECS
from torchsmith.codec import ACT_LAYERS, NN_LAYERS, NORM_LAYERS, build_module, decode, describe_module, encode
from torchsmith.layers import FrozenBatchNorm2d
from torchsmith.models_io.whole import model_to_config

# every {"$layer": name} the encoder of torchsmith 0.1 could write or read, and the class it meant
WRITTEN_BEFORE = {
    "batchnorm": nn.BatchNorm2d, "bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d,
    "instancenorm": nn.InstanceNorm2d, "identity": nn.Identity, "none": nn.Identity, "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
}  # fmt: skip


def json_trip(value):
    return json.loads(json.dumps(value))


# values


def test_every_encoding_written_before_still_decodes():
    problems: list[str] = []
    for name, cls in WRITTEN_BEFORE.items():
        assert decode({"$layer": name}, problems=problems) is cls, name
    for name in ("float32", "float16", "bfloat16", "int64", "bool", "uint8", "complex64", "float8_e4m3fn"):
        assert decode({"$dtype": name}, problems=problems) is getattr(torch, name)
    assert problems == []
    doc = {"norm_layer": {"$layer": "frozen_bn"}, "widths": [1, 2], "nested": {"act": {"$layer": "gelu"}}}
    assert decode(doc, problems=problems) == {"norm_layer": FrozenBatchNorm2d, "widths": [1, 2], "nested": {"act": nn.GELU}}


def test_layer_classes_and_dtypes_round_trip_through_json():
    problems: list[str] = []
    classes = {*ACT_LAYERS.values(), *NORM_LAYERS.values(), *NN_LAYERS.values()}
    for cls in classes:
        assert decode(json_trip(encode(cls, problems=problems)), problems=problems) is cls, cls
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.bool):
        assert decode(json_trip(encode(dtype, problems=problems)), problems=problems) is dtype
    assert problems == []
    assert encode(nn.BatchNorm2d, problems=problems) == {"$layer": "batchnorm"}  # the name written before, kept
    assert encode(nn.Mish, problems=problems) == {"$layer": "Mish"}  # not in the short tables: its torch.nn name
    assert encode(nn.ReLU, problems=problems, bare_layers=True) == "relu"  # to_spec, where the builder takes a name
    assert encode((nn.ReLU, 2), problems=problems, bare_layers=True) == [{"$layer": "relu"}, 2]  # nested: tagged


def test_what_has_no_json_form_is_all_named():
    class Custom(nn.Module):
        pass

    problems: list[str] = []
    encode({"fn": lambda x: x, "rate": math.nan, "layer": Custom, "map": {1: "a"}, "ok": [1, "b", None]}, problems=problems)
    assert [p.split("=")[0].split(" ")[0] for p in problems] == ["['fn']", "['rate']", "['layer']", "['map']"]
    assert "(not finite)" in problems[1] and "(type)" in problems[2] and "non-string keys [1]" in problems[3]
    found: list[str] = []
    assert decode({"x": {"$layer": "os.system"}, "y": {"$dtype": "float99"}}, problems=found) == {"x": None, "y": None}
    assert found == ["['x']: unknown layer name 'os.system'", "['y']: unknown dtype 'float99'"]


# modules as data

X2 = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
X4 = torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1))

# (module with settings away from the defaults, an input): every argument must come back
PLAIN = [
    (nn.Linear(6, 5, bias=False), X2),
    (nn.Bilinear(6, 6, 3), (X2, X2)),
    (nn.Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2, bias=False, padding_mode="reflect"), X4),
    (nn.Conv2d(4, 4, 3, padding="same", padding_mode="circular"), X4),
    (nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1, groups=2), X4),
    (nn.BatchNorm2d(4, eps=1e-3, momentum=None, affine=False, track_running_stats=False), X4),
    (nn.GroupNorm(2, 4, eps=1e-4, affine=False), X4),
    (nn.LayerNorm([9, 9], eps=1e-6, elementwise_affine=False), X4),
    (nn.RMSNorm(6, eps=1e-3), X2),
    (nn.InstanceNorm2d(4, affine=True, track_running_stats=True), X4),
    (nn.LocalResponseNorm(3, alpha=1e-3, beta=0.5, k=2.0), X4),
    (nn.MaxPool2d(3, stride=2, padding=1, dilation=1, ceil_mode=True), X4),
    (nn.AvgPool2d(2, count_include_pad=False, divisor_override=3), X4),
    (nn.LPPool2d(2.0, 3, stride=1, ceil_mode=True), X4),
    (nn.AdaptiveAvgPool2d((2, 3)), X4),
    (nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), X4),
    (nn.Flatten(2), X4),
    (nn.Unflatten(1, (2, 3)), X2),
    (nn.ZeroPad2d((1, 2, 0, 1)), X4),
    (nn.ConstantPad2d(1, 0.5), X4),
    (nn.PixelShuffle(2), X4),
    (nn.LeakyReLU(0.2, inplace=False), X2),
    (nn.PReLU(6, init=0.1), X2),
    (nn.ELU(alpha=0.7), X2),
    (nn.GELU("tanh"), X2),
    (nn.Hardtanh(-2.0, 3.0), X2),
    (nn.Threshold(0.1, 20.0), X2),
    (nn.Softplus(beta=2.0, threshold=10.0), X2),
    (nn.Softmax(dim=0), X2),
    (nn.LogSoftmax(dim=1), X2),
    (nn.GLU(dim=1), X2),
    (nn.Dropout(0.3), X2),
    (nn.Embedding(10, 4, padding_idx=-2, max_norm=1.5, scale_grad_by_freq=True), torch.tensor([[1, 8, 3]])),
    (nn.CosineSimilarity(dim=0, eps=1e-6), (X2, X2.flip(0))),
    (nn.Identity(), X2),
]


@pytest.mark.parametrize("module, x", PLAIN, ids=[type(m).__name__ + str(i) for i, (m, _) in enumerate(PLAIN)])
def test_describe_module_brings_back_every_argument(module, x):
    description, problems = describe_module(module)
    assert problems == []
    built = build_module(json_trip(description))
    assert type(built) is type(module) and repr(built) == repr(module)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in module.state_dict().items()}
    built.load_state_dict(module.state_dict())
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad():
        for mode in (False, True):  # eval and train behave alike (dropout: the same seed)
            torch.manual_seed(0)
            want = module.train(mode)(*xs)
            torch.manual_seed(0)
            assert torch.equal(built.train(mode)(*xs), want)
    assert describe_module(built) == (description, [])  # a fixed point: saving the loaded model writes the same


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class QuietLinear(nn.Linear):
    pass


@pytest.mark.parametrize("module, problem", [
    (nn.LSTM(4, 8, 2), "<module>: its arguments do not rebuild it"),  # LSTM(*args, **kwargs): nothing to read back
    (nn.TransformerEncoderLayer(8, 2), "<module>: TransformerEncoderLayer's argument 'd_model' cannot be read back"),
    (nn.PairwiseDistance(p=1.0), "<module>: rebuilt from the arguments read back, norm is 2.0, not 1.0"),  # kept as .norm
    (Swish(), "<module>: test_codec.Swish is not a torch.nn layer on the allow-list"),
    (QuietLinear(2, 2), "<module>: test_codec.QuietLinear is not a torch.nn layer on the allow-list (a subclass of an allowed one)"),
    (nn.Sequential(nn.Linear(2, 2), nn.Sequential(Swish())), "1.0: test_codec.Swish is not a torch.nn layer"),
    (nn.Sequential(), "<module>: an empty Sequential (use nn.Identity())"),
    (nn.ModuleDict({"a-b": nn.ReLU()}), "<module>: the child name 'a-b' is not letters, digits and _"),
    (nn.ModuleDict({"a\n": nn.ReLU()}), "<module>: the child name 'a\\n' is not letters, digits and _"),  # not "$"
    (nn.utils.parametrizations.weight_norm(nn.Linear(2, 2)), "ParametrizedLinear is not a torch.nn layer on the allow-list"),
    (nn.MultiheadAttention(8, 2), "torch.nn.modules.activation.MultiheadAttention is not a torch.nn layer on the allow-list"),
])  # fmt: skip
def test_describe_module_refuses_what_it_cannot_bring_back(module, problem):
    description, problems = describe_module(module)
    assert description is None and any(problem in p for p in problems), problems


def test_a_container_holding_tensors_of_its_own_is_refused():
    seq = nn.Sequential(nn.Linear(2, 2))
    seq.register_buffer("scale", torch.ones(1))
    assert describe_module(seq, path="head")[1] == ["head: the Sequential holds tensors of its own ['scale']"]


@pytest.mark.parametrize("description, error", [
    ({"Sequential": []}, "<module>.Sequential: no layers"),
    ({"ModuleList": {"a": "ReLU"}}, "<module>.ModuleList: expected a list of layers"),
    ({"Sequential": {"a.b": "ReLU"}}, "child names ['a.b'] are not letters, digits and _"),
    ({"Sequential": {"a\n": "ReLU"}}, "child names ['a\\n'] are not letters, digits and _"),  # a final newline too
    ({"Linear": {"in_features": 2, "out_features": 2, "device": "cuda"}}, "<module>.Linear: expected {argument: value} (no device or dtype)"),
    ({"Linear": [2, 2]}, "<module>.Linear: expected {argument: value}"),
    ({"Linear": {"in_features": 2}}, "<module>: Linear({'in_features': 2}) failed: TypeError"),
    ({"ReLU": {}, "GELU": {}}, "expected a layer name or {Name: arguments}"),
    (42, "expected a layer name or {Name: arguments}, got 42"),
])  # fmt: skip
def test_build_module_refuses_malformed_descriptions(description, error):
    with pytest.raises(ts.ModelConfigError) as info:
        build_module(description)
    assert error in str(info.value)


def test_build_module_names_only_allow_listed_layers():
    with pytest.raises(ts.UnknownModelError, match=r"torch.nn has no layer 'os.system' on torchsmith's allow-list"):
        build_module({"Sequential": [{"os.system": {"command": "true"}}]})
    with pytest.raises(ts.UnknownModelError, match=r"torch.nn.Transformer is not on torchsmith's allow-list"):
        build_module("Transformer")


# random compositions: describe, build, and describe again


def leaves() -> st.SearchStrategy[nn.Module]:
    width = st.integers(1, 6)
    return st.one_of(
        st.builds(lambda i, o, b: nn.Linear(i, o, bias=b), width, width, st.booleans()),
        st.builds(lambda i, o, k, s: nn.Conv2d(i, o, k, stride=s), width, width, st.integers(1, 3), st.integers(1, 2)),
        st.builds(nn.Dropout, st.floats(0, 0.99)),
        st.builds(nn.LeakyReLU, st.floats(-1, 1, allow_nan=False)),
        st.builds(lambda n, m: nn.BatchNorm1d(n, momentum=m), width, st.none() | st.floats(0, 1)),
        st.sampled_from(["ReLU", "GELU", "Tanh", "Identity", "Sigmoid"]).map(lambda n: NN_LAYERS[n]()),
    )


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)
modules = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=4).map(lambda ms: nn.Sequential(*ms)),
        st.dictionaries(names, inner, min_size=1, max_size=3).map(lambda d: nn.Sequential(OrderedDict(d))),
        st.lists(inner, min_size=1, max_size=3).map(nn.ModuleList),
        st.dictionaries(names, inner, min_size=1, max_size=3).map(nn.ModuleDict),
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(modules)
def test_any_composition_of_plain_layers_comes_back(module):
    description, problems = describe_module(module)
    assert problems == []
    with torch.device("meta"):
        built = build_module(json_trip(description))
    assert repr(built) == repr(module)
    assert [(k, v.shape) for k, v in built.state_dict().items()] == [(k, v.shape) for k, v in module.state_dict().items()]
    assert describe_module(built)[0] == description


# save_model writes what to_spec describes, and the reverse


@ts.register_model(name="test_codec_tagged")
def tagged(*, act: type = nn.SiLU, act_layer: type = nn.ReLU, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A builder whose layer argument is not a *_layer one (so its name would be read as a string)."""
    return nn.Sequential(nn.Linear(2, 3, dtype=dtype), act(), act_layer())


ZOO_VARIANTS = [
    *[(name, {}) for name in ts.list_models() if name not in ("spec", "test_codec_tagged")],
    ("resnet18", {"num_classes": 3, "norm_layer": FrozenBatchNorm2d}),
    ("unet", {"widths": (4, 8), "act_layer": nn.Mish, "norm_layer": "instancenorm"}),
    ("mlp", {"hidden": (4,), "act_layer": nn.GELU}),
    ("test_codec_tagged", {"act": nn.Hardswish, "act_layer": nn.ELU, "dtype": torch.float64}),
]


@pytest.mark.parametrize("name, kwargs", ZOO_VARIANTS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ZOO_VARIANTS)])
def test_what_save_model_writes_to_spec_describes(name, kwargs):
    with torch.device("meta"):
        model = ts.create_model(name, **kwargs)
    config = model_to_config(model)  # save_model's encoding: raises when it cannot
    spec = ts.to_spec(model)
    assert json_trip(spec) == spec
    rebuilt = ts.build(spec, device="meta")
    assert [(n, type(m)) for n, m in rebuilt.named_modules()] == [(n, type(m)) for n, m in model.named_modules()]
    assert [(k, v.shape, v.dtype) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape, v.dtype) for k, v in model.state_dict().items()
    ]
    assert set(config["kwargs"]) == set(spec["model"][name] if kwargs else {})


def test_what_neither_can_write_both_refuse():
    model = tagged(act=lambda: nn.ReLU())
    with pytest.raises(ts.UnsaveableModelError, match=r"act=<function .*> \(function\)"):
        model_to_config(model)
    with pytest.raises(ts.SpecError, match=r"act=<function .*> \(function\)"):
        ts.to_spec(model)


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_a_built_spec_is_described_as_written_and_saved_as_written(path):
    model = ts.build(path, device="meta")
    written = yaml.safe_load(path.read_text())
    assert ts.to_spec(model) == written
    assert model_to_config(model)["kwargs"] == {"spec": written}


def test_a_spec_reads_the_codec_forms_in_a_registered_models_arguments():
    spec = {"model": {"test_codec_tagged": {"act": {"$layer": "Hardswish"}, "dtype": {"$dtype": "float64"}}}}
    model = ts.build(spec)
    assert type(model[1]) is nn.Hardswish and model[0].weight.dtype == torch.float64
    assert ts.to_spec(model) == {"model": {"test_codec_tagged": {"act": {"$layer": "Hardswish"}, "dtype": {"$dtype": "float64"}}}}
    with pytest.raises(ts.SpecError, match=r"model.test_codec_tagged.act: unknown layer name 'os.system'"):
        ts.build({"model": {"test_codec_tagged": {"act": {"$layer": "os.system"}}}})
