"""Issue 19, section 1: feature extraction right on every model. Strides that do not hang on the input size,
nodes that do not follow the input left out of the default list, nested inputs, aliased and compiled paths.

References: the layers' own strides multiplied along the path (an independent formula), forward hooks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchsmith import FeatureExtractionError, FeatureInfo, create_model, extract_features, feature_info, feature_nodes


def path_stride(model: nn.Module, node: str) -> int:
    """The product of the strides of every layer run up to ``node`` in a Sequential (the formula)."""
    parent, _, last = node.rpartition(".")
    seq = model.get_submodule(parent)
    stride = 1
    for name, layer in seq.named_children():
        s = getattr(layer, "stride", 1)
        stride *= s[-1] if isinstance(s, tuple) else s
        if name == last:
            return stride
    raise KeyError(node)


class AlexLike(nn.Module):
    """AlexNet's layout: strided convs and pools without exact divisions, adaptive pooling, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(8, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 36, 10))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class SqueezeLike(nn.Module):
    """squeezenet's stem: a 7x7 stride-2 conv without padding, then a ceil-mode pool."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True))

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize("size", [64, 96, 224])
def test_strides_follow_the_layers_not_the_size_asked(size):
    """Was: features.5 of AlexNet reported 21 at 64x64 and 17 at 224x224 for 16; squeezenet 5 for 4."""
    model = AlexLike()
    nodes = ["features.0", "features.2", "features.5"]
    info = feature_info(model, (1, 3, size, size), nodes)
    assert [f.stride for f in info] == [path_stride(model, n) for n in nodes] == [4, 8, 16]
    squeeze = SqueezeLike()
    assert feature_info(squeeze, (1, 3, size, size), ["features.2"])[0].stride == path_stride(squeeze, "features.2") == 4


def test_default_nodes_leave_out_what_does_not_follow_the_input():
    """Was: VGG and AlexNet refused the whole call on avgpool."""
    model = AlexLike()
    assert feature_info(model, (1, 3, 64, 64)) == [FeatureInfo(16, 16, "features")]
    with pytest.raises(FeatureExtractionError, match="'avgpool'"):
        feature_info(model, (1, 3, 64, 64), ["avgpool"])  # asked for by name: still refused, with why


class DictInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.body = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, batch):
        return self.body(F.relu(self.stem(batch["img"][0])))


def test_feature_info_grows_the_tensors_inside_a_dict():
    """Was: "does not run at a second input size" and then no layout: the dict's tensors were not enlarged."""
    info = feature_info(DictInput(), return_nodes=["stem", "body"], example_inputs=({"img": [torch.randn(1, 3, 32, 48)]},))
    assert info == [FeatureInfo(4, 2, "stem"), FeatureInfo(6, 4, "body")]


class Aliased(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.dec = self.enc
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.dec(x))


@pytest.mark.parametrize("mode", ["auto", "hooks"])
def test_extract_features_by_either_name_of_a_module(mode):
    """Was: extract_features(model, ["dec"]) said "did you mean 'enc'?"."""
    model = Aliased()
    x = torch.randn(1, 3, 8, 8)
    seen = {}
    handle = model.enc[0].register_forward_hook(lambda m, i, o: seen.setdefault("conv", o.detach().clone()))
    out = extract_features(model, {"dec.0": "conv", "dec": "block"}, mode=mode)(x)
    handle.remove()
    torch.testing.assert_close(out["conv"], seen["conv"])
    torch.testing.assert_close(out["block"], F.relu(seen["conv"]))


def test_features_of_a_compiled_model_by_its_own_names():
    model = create_model("resnet18")
    compiled = torch.compile(model)  # not called: nothing compiles
    assert feature_nodes(compiled) == feature_nodes(model)
    x = torch.randn(1, 3, 64, 64)
    out = extract_features(compiled, ["layer1", "_orig_mod.layer2"])(x)
    assert [tuple(v.shape) for v in out.values()] == [(1, 64, 16, 16), (1, 128, 8, 8)]
    assert feature_info(compiled, (1, 3, 64, 64), ["layer3"]) == [FeatureInfo(256, 16, "layer3")]


class ListBlock(nn.Module):
    """A block that takes ``[x]`` or ``[x, skip]`` and returns a list (the SelecSLS pattern): what it does depends on
    the Python type of its input, which a module kept whole by torch.fx hides behind a proxy."""

    def __init__(self, channels: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        if not isinstance(x, list):
            x = [x]
        out = torch.relu(self.conv(x[0]))
        return [out, out] if self.first else [out + x[1], x[1]]


class ListPassing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.features = nn.Sequential(*[ListBlock(4, first=i == 0) for i in range(4)])
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.features([self.stem(x)])[0]
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize(
    "nodes", [["features.2.conv"], ["stem", "features.3.conv", "head"], ["features.1.add", "head"], ["features.1", "features.2"]]
)  # fmt: skip
def test_modules_passing_lists_run_as_the_model_runs_them(nodes):
    # timm.selecsls42: blocks not asked for were kept whole, so the next block wrapped their list in a list
    torch.manual_seed(0)
    model, x = ListPassing().eval(), torch.randn(2, 3, 16, 16)
    seen, handles = {}, []
    for node in nodes:
        if node.endswith(".add"):  # the function node: the block's first output, by a hook on the block
            block = model.get_submodule(node.removesuffix(".add"))
            handles.append(block.register_forward_hook(lambda m, i, o, n=node: seen.__setitem__(n, o[0])))
        else:
            handles.append(model.get_submodule(node).register_forward_hook(lambda m, i, o, n=node: seen.__setitem__(n, o)))
    with torch.no_grad():
        model(x)
        for h in handles:
            h.remove()
        extractor = extract_features(model, nodes)
        got = extractor(x)
    assert extractor.strategy == "fx"
    for node in nodes:  # a block asked for gives the list it returns
        torch.testing.assert_close(got[node], seen[node], rtol=0, atol=0)


class Masked(nn.Module):
    """An optional argument that defaults to None (timm's Hiera: ``forward(x, mask=None)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.body = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x, mask=None):
        x = self.stem(x)
        if mask is not None:
            x = x * mask.unsqueeze(1)
        return self.body(x)


def test_a_graph_that_reads_an_argument_defaulting_to_none_is_not_run_without_it():
    # timm.hiera_tiny_224: traced as an input, `mask is not None` was true, and the graph called None.view when run
    torch.manual_seed(0)
    model, x, mask = Masked().eval(), torch.randn(2, 3, 16, 16), torch.rand(2, 8, 8)
    seen = []
    handle = model.body.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(x), model(x, mask)
        handle.remove()
        auto = extract_features(model, ["body"])  # modules: hooks, exact with and without the mask
        assert auto.strategy == "hooks"
        torch.testing.assert_close(auto(x)["body"], seen[0], rtol=0, atol=0)
        torch.testing.assert_close(auto(x, mask)["body"], seen[1], rtol=0, atol=0)
        graph = extract_features(model, ["body"], mode="fx")  # traced as the call without it, and refuses it
        torch.testing.assert_close(graph(x)["body"], seen[0], rtol=0, atol=0)
        with pytest.raises(FeatureExtractionError, match=r"traced with mask=None .* mode='hooks'"):
            graph(x, mask)
        with pytest.raises(FeatureExtractionError, match=r"traced with mask=None"):
            graph(x, mask=mask)
    assert [(i.module, i.channels, i.stride) for i in feature_info(model, (1, 3, 32, 32), ["stem", "body"])] == [
        ("stem", 4, 2), ("body", 6, 4)]  # the layers' strides
