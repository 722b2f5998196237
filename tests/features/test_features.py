from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from torchsmith import FeatureExtractionError, FeatureInfo, create_model, extract_features, feature_info, feature_nodes


# helpers


def hooked_outputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Independent reference: every call's output of the named modules, cloned at once, in call order."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach().clone())) for n in names
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@contextmanager
def counting_calls(module: nn.Module) -> Iterator[list[int]]:
    calls: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 4, 1)
        self.tail = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.act(self.stem(x))
        if x.mean().item() > -1:  # always true, but only known at run time
            x = self.act(x)  # second call of the same module
        return self.tail(self.head(x))


class ModeDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        z = y * 2 if self.training else y - 1
        return z + 0


# strategies and values


def test_sequential_uses_children_and_stops_after_last_node():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU())
    ex = extract_features(seq, {"1": "act"})
    assert ex.strategy == "children"
    with counting_calls(seq[2]) as calls:
        out = ex(X)
    assert list(out) == ["act"]
    torch.testing.assert_close(out["act"], torch.relu(seq[0](X)))
    assert calls == []


def test_resnet_stage_is_children_path_and_skips_later_stages(resnet18):
    ex = extract_features(resnet18, ["layer1", "layer2"])
    assert ex.strategy == "children"
    with counting_calls(resnet18.layer3) as calls:
        out = ex(X)
    assert calls == []
    ref = hooked_outputs(resnet18, X, ["layer1", "layer2"])
    assert [tuple(v.shape) for v in out.values()] == [(1, 64, 16, 16), (1, 128, 8, 8)]
    for name in ("layer1", "layer2"):
        torch.testing.assert_close(out[name], ref[name][0], rtol=0, atol=0)
    # state_dict keys are the model's own, for the children still used
    assert list(ex.state_dict()) == [k for k in resnet18.state_dict() if k.split(".")[0] in dict(ex.named_children())]


def test_nested_names_use_fx_with_renames(resnet18):
    ex = extract_features(resnet18, {"layer3.1.conv2": "mid", "layer2": "c3"})
    assert ex.strategy == "fx"
    out = ex(X)
    assert list(out) == ["mid", "c3"]  # the order asked for
    ref = hooked_outputs(resnet18, X, ["layer3.1.conv2", "layer2"])
    torch.testing.assert_close(out["mid"], ref["layer3.1.conv2"][0], rtol=0, atol=0)
    torch.testing.assert_close(out["c3"], ref["layer2"][0], rtol=0, atol=0)


def test_function_nodes_and_values_before_in_place_ops(resnet18):
    # BasicBlock: out = bn2(...); out += identity (in place); relu(out) (in place)
    ex = extract_features(resnet18, ["layer1.0.bn2", "layer1.0.add", "layer1.0.relu_1"])
    out = ex(X)
    seen = hooked_outputs(resnet18, X, ["layer1.0.bn2", "maxpool", "layer1.0"])
    bn2, identity = seen["layer1.0.bn2"][0], seen["maxpool"][0]
    torch.testing.assert_close(out["layer1.0.bn2"], bn2, rtol=0, atol=0)  # not overwritten by `+=`
    torch.testing.assert_close(out["layer1.0.add"], bn2 + identity, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["layer1.0.relu_1"], seen["layer1.0"][0], rtol=0, atol=0)
    assert (out["layer1.0.add"] < 0).any()  # really before the ReLU


def _shortcut(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """As torchvision MViT's ``_add_shortcut``: writes into ``x``; the caller ignores the result."""
    x.add_(skip)
    return x


torch.fx.wrap("_shortcut")


class WritesInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)  # (B, 4)
        _shortcut(y, x)  # kept whole by fx (wrapped), result unused
        z = self.b(y)
        z.mul_(2)  # an in-place method, result unused
        return self.c(z)


def test_in_place_writes_whose_result_is_unused_are_kept():
    """Found by the sweep (torchvision mvit_v2_s): dead-code elimination dropped `_add_shortcut(x, q)`, whose
    result is unused but which writes into x; every later value was wrong (error 1.4 at scale 1.4)."""
    model = WritesInPlace().eval()
    x = torch.randn(2, 4)
    seen = hooked_outputs(model, x, ["a", "b", "c"])
    out = extract_features(model, ["a", "b", "c"], mode="fx")(x)
    for name in ("a", "b", "c"):
        torch.testing.assert_close(out[name], seen[name][0], rtol=0, atol=0)
    torch.testing.assert_close(extract_features(model, ["b"], mode="fx")(x)["b"], seen["b"][0], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["fx", "hooks"])
def test_module_called_twice_first_call_by_name_then_suffixes(resnet18, mode):
    ex = extract_features(resnet18, ["layer1.0.relu", "layer1.0.relu_1"], mode=mode)
    assert ex.strategy == mode
    out = ex(X)
    calls = hooked_outputs(resnet18, X, ["layer1.0.relu"])["layer1.0.relu"]
    assert len(calls) == 2
    torch.testing.assert_close(out["layer1.0.relu"], calls[0], rtol=0, atol=0)
    torch.testing.assert_close(out["layer1.0.relu_1"], calls[1], rtol=0, atol=0)
    assert not torch.equal(calls[0], calls[1])


def test_untraceable_model_falls_back_to_hooks_and_stops_early():
    torch.manual_seed(0)
    model = Branchy().eval()
    ex = extract_features(model, ["act_1", "head"])
    assert ex.strategy == "hooks"
    with counting_calls(model.tail) as calls:
        out = ex(X)
    assert calls == []
    ref = hooked_outputs(model, X, ["act", "head"])
    torch.testing.assert_close(out["act_1"], ref["act"][1])
    torch.testing.assert_close(out["head"], ref["head"][0])
    assert list(ex.state_dict())[0] == "model.stem.weight"
    with pytest.raises(FeatureExtractionError, match="torch.fx failed"):
        extract_features(model, ["add"])  # a function node needs fx
    with pytest.raises(FeatureExtractionError, match="cannot trace"):
        extract_features(model, ["head"], mode="fx")


def test_unknown_names_are_all_listed_with_closest_valid_names(resnet18):
    with pytest.raises(FeatureExtractionError) as err:
        extract_features(resnet18, ["layer5", "layer1.0.con1", "layer2"])
    msg = str(err.value)
    assert "'layer5': did you mean 'layer4'" in msg
    assert "'layer1.0.con1': did you mean 'layer1.0.conv1'" in msg
    assert "'layer2'" not in msg.split("did you mean")[0]
    with pytest.raises(FeatureExtractionError, match="did you mean 'layer1'"):
        extract_features(resnet18, ["layer1x"], mode="hooks")
    with pytest.raises(FeatureExtractionError, match="not reached by running its top-level children"):
        extract_features(resnet18, ["layer1.0.conv1"], mode="children")
    with pytest.raises(FeatureExtractionError, match="two nodes to one output name"):
        extract_features(resnet18, {"layer1": "a", "layer2": "a"})


# survives copies, modes and compilation


def test_deepcopy_and_pickle_keep_values_and_stop_sharing(resnet18):
    ex = extract_features(resnet18, {"layer2.0.add": "sum", "layer3": "c4"})
    ref = ex(X)
    for clone in (copy.deepcopy(ex), pickle.loads(pickle.dumps(ex))):
        out = clone(X)
        for k in ref:
            torch.testing.assert_close(out[k], ref[k], rtol=0, atol=0)
        assert clone.get_submodule("layer3.0.conv1").weight is not resnet18.layer3[0].conv1.weight


def test_extractor_follows_train_and_eval():
    model = ModeDependent()
    ex = extract_features(model, ["add"])
    assert ex.strategy == "fx"
    x = torch.randn(2, 4)
    y = model.lin(x)
    torch.testing.assert_close(ex.train()(x)["add"], y * 2)
    torch.testing.assert_close(ex.eval()(x)["add"], y - 1)
    # BatchNorm statistics move through the shared modules in train mode only
    bn_model = create_model("resnet18")
    ex = extract_features(bn_model, ["layer1"]).train()
    before = bn_model.bn1.running_mean.clone()
    ex(X)
    assert not torch.equal(bn_model.bn1.running_mean, before)
    ex.eval()
    after = bn_model.bn1.running_mean.clone()
    ex(X)
    assert torch.equal(bn_model.bn1.running_mean, after)


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [["layer2"], ["layer1.0.add", "layer2"]])
def test_torch_compile_gives_the_same_values(resnet18, nodes):
    ex = extract_features(resnet18, nodes)
    compiled = torch.compile(ex, backend="eager", fullgraph=True)
    ref = ex(X)
    out = compiled(X)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])


@pytest.mark.slow
def test_torch_compile_inductor_on_a_small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    ex = extract_features(model, {"2": "act"}, mode="fx")
    torch.testing.assert_close(torch.compile(ex)(X)["act"], ex(X)["act"], rtol=1e-4, atol=1e-5)


# node names and feature info


def test_feature_nodes_use_torchvision_naming(resnet18):
    nodes = feature_nodes(resnet18)
    assert nodes[:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert nodes[4:11] == [
        "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu", "layer1.0.conv2", "layer1.0.bn2", "layer1.0.add", "layer1.0.relu_1",
    ]  # fmt: skip
    assert nodes[-3:] == ["avgpool", "flatten", "fc"]
    assert "layer2.0.downsample.0" in nodes
    assert feature_nodes(Branchy()) == ["stem", "act", "head", "tail"]  # untraceable: module paths


def test_every_listed_node_can_be_extracted(resnet18):
    nodes = feature_nodes(resnet18)
    out = extract_features(resnet18, nodes)(X)
    assert list(out) == nodes
    torch.testing.assert_close(out["fc"], resnet18(X))


def test_feature_info_for_resnet50_and_any_model():
    model = create_model("resnet50")
    info = feature_info(model, (1, 3, 224, 224))
    assert info == [
        FeatureInfo(64, 2, "relu"), FeatureInfo(256, 4, "layer1"), FeatureInfo(512, 8, "layer2"),
        FeatureInfo(1024, 16, "layer3"), FeatureInfo(2048, 32, "layer4"),
    ]  # fmt: skip
    assert info == model.feature_info  # what the model declares is what it computes
    # any model, nested names, on meta: a 4096x4096 input costs nothing
    assert feature_info(model, (1, 3, 4096, 4096), ["layer3.2.conv2", "fc"]) == [
        FeatureInfo(256, 16, "layer3.2.conv2"), FeatureInfo(1000, 0, "fc"),
    ]  # fmt: skip
    assert model.conv1.weight.device.type == "cpu"
    assert feature_info(Branchy(), (1, 3, 32, 32), ["head"]) == [FeatureInfo(4, 1, "head")]  # real-run fallback


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 16), w=st.integers(1, 16))
def test_feature_info_stride_rule(h, w):
    model = create_model("resnet18")
    info = feature_info(model, (2, 3, 32 * h, 32 * w), ["layer1", "layer4"])
    assert [(f.channels, f.stride) for f in info] == [(64, 4), (512, 32)]


# regressions found on the peer matrix: mode, aux nodes, aliases, layouts, declared strides


class BatchNormAct(nn.BatchNorm2d):
    """Like timm's BatchNormAct2d: a BatchNorm subclass carrying an activation, traced through."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x):
        x = nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        return self.act(x)


class WithAux(nn.Module):
    """A train-only head (googlenet's aux1), an alias (Identity) overwritten in place later."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = BatchNormAct(4)
        self.same = nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.aux = nn.Conv2d(4, 2, 1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.same(self.bn(self.conv(x)) - 0.5)
        aux = self.aux(x) if self.training else None
        x = self.relu(x)
        y = self.out(x)
        return (y, aux) if self.training else y


def with_stats(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_extractor_starts_in_the_model_mode_and_keeps_statistics():
    """Was: always train mode; a node inside a BatchNorm subclass then used batch statistics and moved them."""
    torch.manual_seed(0)
    model = with_stats(WithAux()).eval()
    ref = hooked_outputs(model, X, ["bn.act", "same"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ex = extract_features(model, ["bn.act", "same", "out"])
    assert ex.training is False and isinstance(ex, torch.fx.GraphModule)
    out = ex(X)
    torch.testing.assert_close(out["bn.act"], ref["bn.act"][0], rtol=0, atol=0)
    # 'same' is an alias of a tensor the in-place relu overwrites later: cloned, so the value it produced
    torch.testing.assert_close(out["same"], ref["same"][0], rtol=0, atol=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert extract_features(model.train(), ["bn.act"]).training is True


def test_train_only_nodes_are_reachable():
    """Was: "no node named 'aux': did you mean 'aux'"."""
    torch.manual_seed(0)
    model = WithAux().train()
    assert "aux" in feature_nodes(model, training=True) and "aux" not in feature_nodes(model)
    ex = extract_features(model, ["aux"])
    torch.testing.assert_close(ex(X)["aux"], model(X)[1])
    with pytest.raises(FeatureExtractionError, match=r"\['aux'\] run only in train mode.*\.train\(\)"):
        ex.eval()(X)
    with pytest.raises(FeatureExtractionError, match="never calls") as err:
        extract_features(Unused(), ["spare"])
    assert "did you mean 'spare'" not in str(err.value)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.spare = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x) * 2


class ChannelsLast(nn.Module):
    """Swin-like: (B, H, W, C) feature maps; and ViT-like tokens (B, L, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 12, 4, stride=4)
        self.norm = nn.LayerNorm(12)
        self.proj = nn.Linear(12, 6)

    def forward(self, x):
        x = self.norm(self.patch(x).permute(0, 2, 3, 1))  # (B, H/4, W/4, 12)
        tokens = self.proj(x.flatten(1, 2))  # (B, L, 6)
        return tokens.mean(1)  # (B, 6)


class FixedSize(ChannelsLast):
    def forward(self, x):
        torch._assert(x.shape[-1] == 32, "only 32x32")
        return super().forward(x)


def test_feature_info_says_where_the_channels_are():
    """Was: channels=7 for swin's NHWC maps, 197 for ViT tokens (dim 1 taken as channels)."""
    info = feature_info(ChannelsLast(), (1, 3, 32, 32), ["norm", "proj", "patch"])
    assert info == [
        FeatureInfo(12, 4, "norm", layout="channels_last"), FeatureInfo(6, 0, "proj", layout="tokens"),
        FeatureInfo(12, 4, "patch"),
    ]  # fmt: skip
    assert repr(info[0]) == "FeatureInfo(channels=12, stride=4, module='norm', layout='channels_last')"
    fixed = feature_info(FixedSize(), (1, 3, 32, 32), ["norm", "patch"])  # one size only: the grid rule decides
    assert [(f.channels, f.layout) for f in fixed] == [(12, "channels_last"), (12, "channels_first")]
    with pytest.raises(FeatureExtractionError, match=r"cannot tell which dimension of 'proj'.*\(1, 64, 6\)"):
        feature_info(FixedSize(), (1, 3, 32, 32), ["proj"])


def test_feature_info_reads_declared_info_and_our_mlp_agrees():
    """timm's list of dicts is read (was: 'dict' object has no attribute 'module'); the MLP declared stride 1
    while feature_info computed 0."""
    mlp = create_model("mlp")
    assert feature_info(mlp, (2, 784)) == mlp.feature_info == [FeatureInfo(mlp.num_features, 0, "features")]
    model = ChannelsLast()
    model.feature_info = [{"module": "norm", "num_chs": 12, "reduction": 4}, {"module": "proj", "num_chs": 6, "reduction": 4}]
    assert feature_info(model, (1, 3, 32, 32)) == [
        FeatureInfo(12, 4, "norm", layout="channels_last"), FeatureInfo(6, 4, "proj", layout="tokens"),
    ]  # fmt: skip


def test_feature_info_takes_example_inputs_of_any_dtype():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.mix = nn.Linear(16, 16)

        def forward(self, ids, mask=None):
            x = self.mix(self.embed(ids))  # (B, L, 16)
            return x if mask is None else x * mask[..., None]

    ids = torch.randint(0, 50, (2, 7))
    assert feature_info(Tokens(), return_nodes=["mix"]) == [FeatureInfo(16, 0, "mix", layout="tokens")]  # ids guessed
    info = feature_info(Tokens(), return_nodes=["mix"], example_inputs={"ids": ids, "mask": torch.ones(2, 7)})
    assert info == [FeatureInfo(16, 0, "mix", layout="tokens")]
    with pytest.raises(FeatureExtractionError, match="example_inputs="):
        feature_info(Tokens(), return_nodes=["mix"], example_inputs=torch.randn(2, 7))  # floats: embedding refuses


def test_feature_info_of_a_node_without_a_tensor_output_says_which_nodes_to_ask_for():
    """Found by the sweep (transformers' vision models, timm's efficientvim): the refusal named no next step."""

    class Pair(nn.Module):
        def forward(self, x):
            return x, x.mean()

    model = nn.Sequential(nn.Conv2d(3, 4, 3), Pair())
    with pytest.raises(FeatureExtractionError, match=r"node '1' of Sequential gives tuple.*Pass return_nodes=.*feature_nodes\(model\)"):
        feature_info(model, (1, 3, 16, 16), ["1"])
    assert feature_info(model, (1, 3, 16, 16), ["0"]) == [FeatureInfo(4, 1, "0")]
