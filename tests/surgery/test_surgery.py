from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import fingerprint, randomise_bn_
from torchsmith import (
    FreezeReport,
    FrozenBatchNorm2d,
    MultiInputModel,
    SurgeryError,
    adapt_input_channels,
    add_inputs,
    create_model,
    fold_batchnorm,
    freeze,
    get_module,
    optimize_for_inference,
    replace_head,
    replace_module,
    freeze_report,
    unfreeze,
)

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))




def plain_mlp() -> nn.Module:
    """Not one of ours: no get_classifier, a softmax after the head."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5), nn.Softmax(dim=1),
    )  # fmt: skip


# find and replace


def test_get_module_and_closest_names_on_error():
    model = create_model("resnet18")
    assert get_module(model, "layer3.1.conv2") is model.layer3[1].conv2
    assert get_module(model, "") is model
    with pytest.raises(SurgeryError, match=r"no module 'layer3\.1\.conv3'\. Did you mean 'layer3\.1\.conv2'"):
        get_module(model, "layer3.1.conv3")


def test_replace_module_keeps_device_and_dtype_and_returns_model():
    model = create_model("resnet18").to(torch.float64)
    out = replace_module(model, "layer1.0.conv1", nn.Conv2d(64, 64, 3, padding=1, bias=False))
    assert out is model
    assert model.layer1[0].conv1.weight.dtype == torch.float64
    assert model(X.double()).dtype == torch.float64
    with pytest.raises(SurgeryError, match="root cannot replace itself"):
        replace_module(model, "", nn.Identity())


# heads


def test_tutorial_head_to_20_classes_really_gives_20_outputs():
    model = create_model("resnet50")
    broken = copy.deepcopy(model)
    broken.fc.out_features = 20  # the tutorial's bug: the printed number changes, nothing else
    assert broken(X[:1]).shape == (1, 1000)
    old_fc = model.fc
    assert replace_head(model, 20) is model
    assert model(X[:1]).shape == (1, 20)
    assert model.fc is not old_fc and model.fc.weight.shape == (20, 2048)
    assert model.num_classes == 20 and model.torchsmith_config["steps"] == [{"op": "replace_head", "num_classes": 20, "path": "fc"}]
    assert replace_head(model, 0)(X[:1]).shape == (1, 2048)  # pooled features
    assert replace_head(model, 7)(X[:1]).shape == (1, 7)  # back from an Identity head


def test_replace_head_of_any_model_found_by_probe_keeps_dtype():
    model = plain_mlp().to(torch.float64)
    replace_head(model, 7)
    assert isinstance(model[6], nn.Linear) and model[6].out_features == 7 and model[6].in_features == 16
    assert model[6].weight.dtype == torch.float64
    out = model(X.double())
    assert out.shape == (2, 7)
    torch.testing.assert_close(out.sum(1), torch.ones(2, dtype=torch.float64))  # the softmax stays


def test_replace_head_on_tutorial_named_classifier():
    model = create_model("resnet50")
    classifier = nn.Sequential(OrderedDict(
        fc1=nn.Linear(2048, 128), relu=nn.ReLU(), dropout=nn.Dropout(0.5), fc2=nn.Linear(128, 10), output=nn.Softmax(dim=1),
    ))  # fmt: skip
    replace_module(model, "fc", classifier)
    assert model.eval()(X[:1]).shape == (1, 10)
    replace_head(model, 3, path="fc.fc2")
    assert model(X[:1]).shape == (1, 3) and model.num_classes == 3


def test_ambiguous_head_lists_candidates():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            return self.a(x) + self.b(x)

    with pytest.raises(SurgeryError, match="candidates a, b"):
        replace_head(TwoHeads(), 5)
    model = TwoHeads()
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"unable to run on \(\(1, 4\)\).*size of tensor a \(5\).*as it was"):
        replace_head(model, 5, path="a")  # a: 5 outputs + b: 3 no longer adds up (issue 19: edits check themselves)
    assert fingerprint(model) == before and model.a.out_features == 3

    class TwoOutputs(TwoHeads):
        def forward(self, x):
            return self.a(x), self.b(x)

    model = replace_head(TwoOutputs(), 5, path="b")
    assert model.b.out_features == 5 and [y.shape[1] for y in model(torch.randn(2, 4))] == [3, 5]


# freezing


def test_freeze_all_but_layer2_to_4_matches_torchvision_trainable_layers(reference):
    model = create_model("resnet50", norm_layer="frozen_bn")
    assert freeze(model, exclude=["layer2", "layer3", "layer4"]) is model
    report = freeze_report(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ref = [n.removeprefix("body.") for n in reference["resnet50_fpn_tl3"]["trainable_names"] if n.startswith("body.")]
    assert names == ref
    assert report.trainable == ["layer2", "layer3", "layer4"]
    assert report.frozen == ["conv1", "layer1", "fc"]  # FrozenBatchNorm2d has no parameters
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_freeze_report_reads_well():
    model = create_model("resnet18")
    report = freeze_report(freeze(model, exclude=["layer2", "layer3", "layer4"]))
    assert isinstance(report, FreezeReport)
    assert str(report) == (
        "frozen: conv1, bn1, layer1, fc (670,504 parameters)\n"
        "trainable: layer2, layer3, layer4 (11,019,008 of 11,689,512 parameters)\n"
        "BatchNorm: 5 layers kept in eval mode (running statistics fixed)"
    )


def test_bn_eval_policy_keeps_statistics_through_train_and_unfreeze_restores():
    model = create_model("resnet18").train()
    model.layer4.requires_grad_(False)  # frozen before: stays frozen after unfreeze
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = freeze_report(freeze(model, ["layer1", "bn*"]))
    assert report.bn_eval == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"]
    model.train()
    assert not model.bn1.training and not model.layer1[1].bn2.training and model.layer2[0].bn1.training
    model(X)
    after = model.state_dict()
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert unfreeze(model) is model
    assert model.bn1.training and "train" not in model.bn1.__dict__ and freeze_report(model).bn_eval == []
    assert model.layer1[0].conv1.weight.requires_grad and not model.layer4[0].conv1.weight.requires_grad
    copy.deepcopy(model).train()  # no leftovers that break copies


def test_bn_frozen_policy_swaps_and_unfreeze_restores_equal_modules():
    model = randomise_bn_(create_model("resnet18")).eval()
    model.bn1.momentum, model.layer1[0].bn2.eps = 0.3, 1e-3
    originals = {n: copy.deepcopy(m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    ref = model(X)
    report = freeze_report(freeze(model, bn="frozen"))
    assert sorted(report.bn_replaced) == sorted(originals)
    assert isinstance(model.layer3[0].downsample[1], FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.train()(X), ref)  # frozen BN ignores train mode
    unfreeze(model)
    for n, m in originals.items():  # a BatchNorm2d configured as before, holding the same values
        back = model.get_submodule(n)
        assert type(back) is nn.BatchNorm2d and (back.eps, back.momentum) == (m.eps, m.momentum)
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), m.state_dict().values()))
    assert all(p.requires_grad for p in model.parameters()) and model.training and model.bn1.training


def test_freeze_unknown_patterns_are_all_named():
    model = create_model("resnet18")
    with pytest.raises(SurgeryError) as err:
        freeze(model, ["layer5", "layr1", "layer2"])
    assert "'layer5'. Did you mean 'layer4'" in str(err.value) and "'layr1'" in str(err.value)
    assert all(p.requires_grad for p in model.parameters())  # nothing changed
    with pytest.raises(SurgeryError, match="bn must be"):
        freeze(model, bn="off")


# inputs


@pytest.mark.parametrize("policy", ["fewer", "more"])
def test_adapt_input_channels_keeps_outputs(policy):
    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    ref = model(X)
    weight = model.conv1.weight.clone()
    adapted = adapt_input_channels(copy.deepcopy(model), 1 if policy == "fewer" else 6)
    if policy == "fewer":  # a gray image g: the original on (g, g, g)
        gray = X[:, :1]
        torch.testing.assert_close(adapted(gray), model(gray.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
        assert adapted.in_chans == 1 and adapted.conv1.in_channels == 1
    else:  # cat([x, x]) gives the original's output on x
        torch.testing.assert_close(adapted(torch.cat([X, X], 1)), ref, rtol=1e-4, atol=1e-4)
        assert adapted.torchsmith_config["steps"] == [{"op": "adapt_input_channels", "in_chans": 6, "path": "conv1"}]
    assert torch.equal(model.conv1.weight, weight)  # the deep copy's change stays there


@settings(max_examples=25, deadline=None)
@given(source=st.integers(1, 6), target=st.integers(1, 12))
def test_adapt_input_channels_tiling_rule(source, target):
    torch.manual_seed(source * 13 + target)
    conv = nn.Conv2d(source, 4, 3)
    model = adapt_input_channels(nn.Sequential(copy.deepcopy(conv)), target)
    x = torch.randn(1, min(source, target), 5, 5)
    if target <= source:  # adapted(x) == original(tile(x, source))
        x = torch.randn(1, target, 5, 5)
        tiled = x[:, torch.arange(source) % target]
        torch.testing.assert_close(model(x), conv(tiled), rtol=1e-4, atol=1e-5)
    elif target % source == 0:  # adapted(tile(x, target)) == original(x)
        x = torch.randn(1, source, 5, 5)
        torch.testing.assert_close(model(x[:, torch.arange(target) % source]), conv(x), rtol=1e-4, atol=1e-5)
    assert model[0].weight.shape == (4, target, 3, 3)


def test_add_inputs_tutorial_model_and_width_errors():
    torch.manual_seed(0)
    both = add_inputs(create_model("resnet18"), extra_features=1, num_classes=10)
    assert isinstance(both, MultiInputModel) and both.num_features == 512
    assert isinstance(both.backbone.fc, nn.Identity)  # pooled features, the old head gone
    out = both(X, torch.randn(2))  # one scalar per sample
    assert out.shape == (2, 10)
    # the extra input really reaches the output
    extra = torch.randn(2, 1)
    assert not torch.allclose(both.eval()(X, extra), both(X, extra + 1))
    with pytest.raises(SurgeryError, match=r"must be \(B, 1\).*got \(2, 3\)"):
        both(X, torch.randn(2, 3))


def test_add_inputs_any_model_fuses_what_goes_into_its_head():
    """No get_classifier, a softmax after the head: the features fused are the head's input (hook reference)."""
    torch.manual_seed(0)
    model = plain_mlp().eval()
    seen = []
    handle = model[6].register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    with torch.no_grad():
        model(X)
    handle.remove()
    both = add_inputs(model, extra_features=4, num_classes=3, fusion="add").eval()
    assert both.num_features == 16 and isinstance(both.act, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(both.backbone(X), seen[0])
        extra = torch.randn(2, 4)
        expected = both.head(seen[0] + both.project(extra))
        torch.testing.assert_close(both(X, extra), expected)
    assert isinstance(model[6], nn.Linear)  # the softmax model keeps its head; the forward stops at it
    with pytest.raises(SurgeryError, match="fusion must be"):
        add_inputs(plain_mlp(), extra_features=4, num_classes=3, fusion="film")


@pytest.mark.slow
def test_add_inputs_exports_with_torch_export():
    torch.manual_seed(0)
    both = add_inputs(create_model("resnet18"), extra_features=3, num_classes=4).eval()
    args = (X, torch.randn(2, 3))
    program = torch.export.export(both, args)
    torch.testing.assert_close(program.module()(*args), both(*args))


# inference


def test_fold_batchnorm_keeps_outputs_and_class():
    model = randomise_bn_(create_model("resnet18")).eval()
    ref = model(X)
    folded = fold_batchnorm(copy.deepcopy(model))
    assert type(folded) is type(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == 0
    y = folded(X)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_fold_batchnorm_needs_eval_and_handles_untraceable_sequentials():
    model = randomise_bn_(create_model("resnet18"))  # train mode: batch statistics, nothing can be folded
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SurgeryError, match=r"needs eval mode: 20 BatchNorm layers .*model\.eval\(\)"):
        fold_batchnorm(model)
    assert isinstance(model.bn1, nn.BatchNorm2d) and model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

        def forward(self, x):
            return self.body(x) if x.sum().item() != 0.123 else x

    model = randomise_bn_(Untraceable()).eval()
    ref = model(X)
    fold_batchnorm(model)
    assert isinstance(model.body[1], nn.Identity)
    torch.testing.assert_close(model(X), ref, rtol=1e-4, atol=1e-5)


def test_optimize_for_inference_equal_outputs_in_place():
    model = randomise_bn_(create_model("resnet50")).train()
    original = copy.deepcopy(model)
    fast = optimize_for_inference(model)
    assert fast is model  # in place, as every surgery function
    assert original.training and isinstance(original.bn1, nn.BatchNorm2d)
    model = original
    assert not fast.training and isinstance(fast.bn1, nn.Identity)
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in fast.parameters())
    with torch.no_grad():
        ref = model.eval()(X)
    y = fast(X)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4 * ref.abs().max().item())


def test_optimize_for_inference_compiled_equal_outputs():
    torch._dynamo.reset()
    model = randomise_bn_(create_model("resnet18")).eval()
    faster = optimize_for_inference(copy.deepcopy(model), compile=True)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # the copy was changed
    with torch.inference_mode():
        ref = model(X)
        y = faster(X)
        y2 = faster(X * 2)  # a second input: no stale frozen activations
        ref2 = model(X * 2)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    torch.testing.assert_close(y2, ref2, rtol=0, atol=1e-4 * ref2.abs().max().item())


def test_replace_head_without_conv_or_linear_asks_for_input_size():
    from torchsmith import SurgeryError

    with pytest.raises(SurgeryError, match=r"pass example_inputs=.*input_size"):
        replace_head(nn.Sequential(nn.Flatten(), nn.ReLU()), 3)


# regressions found on the peer matrix


class Cached(nn.Module):
    """torchvision's AnchorGenerator habit: a forward that caches tensors (and counts) on the module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)
        self.register_buffer("calls", torch.zeros(()))
        self.cache = [torch.zeros(2)]

    def forward(self, x):
        self.cache = [c.to(x.device) for c in self.cache]
        self.calls += 1
        return {"scores": self.fc(self.pool(self.conv(x)).flatten(1))}  # no tensor, logits or out to call the prediction


def test_probes_leave_no_trace_on_success_and_failure():
    model = Cached()
    before, cache = fingerprint(model), model.cache
    with pytest.raises(SurgeryError, match="pass path="):
        replace_head(model, 3)
    assert fingerprint(model) == before and model.cache is cache and model.calls == 0
    model.forward = lambda x: Cached.forward(model, x)["scores"]
    replace_head(model, 3)
    assert model.fc.out_features == 3 and model.cache is cache and model.calls == 0 and not model.cache[0].is_meta


def test_conv_head_keeps_every_setting():
    """Was: only kernel_size kept; the U-Net's 3x3 head lost its padding ((1, 2, 14, 14) instead of 16x16)."""
    unet = replace_head(create_model("unet"), 2).eval()
    assert unet(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)
    old = nn.Conv2d(8, 4, 3, stride=2, padding=2, dilation=2, groups=2, bias=False, padding_mode="reflect")
    model = replace_head(nn.Sequential(nn.Conv2d(3, 8, 1), old), 6, path="1")
    new = model[1]
    assert (new.kernel_size, new.stride, new.padding, new.dilation, new.groups, new.bias, new.padding_mode) == (
        (3, 3), (2, 2), (2, 2), (2, 2), 2, None, "reflect") and new.out_channels == 6
    with pytest.raises(SurgeryError, match="groups=2; 5 outputs"):
        replace_head(model, 5, path="1")


class TwoHeads(nn.Module):
    """googlenet's shape: an aux classifier the train-mode forward returns too."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.aux = nn.Sequential(nn.ReLU(), nn.Linear(8, 10))
        self.fc = nn.Linear(8, 10)
        self.other = nn.Linear(8, 4)

    def forward(self, x):
        h = self.body(x)
        if self.training:
            return self.fc(h), self.aux(h), self.other(h)
        return self.fc(h)


def test_replace_head_changes_the_aux_heads_too():
    model = replace_head(TwoHeads(), 3)
    assert model.fc.out_features == model.aux[1].out_features == 3 and model.other.out_features == 4
    out = model.train()(torch.randn(2, 6))
    assert [o.shape[1] for o in out] == [3, 3, 4]


def test_token_models_take_example_inputs():
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(30, 8)
            self.head = nn.Linear(8, 5)

        def forward(self, ids, segments):
            return self.head(self.embed(ids) + self.embed(segments))

    ids = torch.randint(0, 30, (2, 6))
    with pytest.raises(SurgeryError, match=r"cannot run Tagger on \(\(1, 8\) int64\).*example_inputs="):
        replace_head(Tagger(), 3)
    model = replace_head(Tagger(), 3, example_inputs=(ids, ids))
    assert model(ids, ids).shape == (2, 6, 3)
    assert replace_head(Tagger(), 3, example_inputs={"ids": ids, "segments": ids}).head.out_features == 3


def test_freeze_failing_half_way_leaves_the_model_as_it_was(monkeypatch):
    model = create_model("resnet18").train()
    before = fingerprint(model)
    calls = []

    def fail_third(bn):
        calls.append(bn)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return FrozenBatchNorm2d.from_batchnorm.__wrapped__(bn) if hasattr(FrozenBatchNorm2d.from_batchnorm, "__wrapped__") else original(bn)

    original = FrozenBatchNorm2d.from_batchnorm
    monkeypatch.setattr(FrozenBatchNorm2d, "from_batchnorm", staticmethod(fail_third))
    with pytest.raises(RuntimeError, match="disk on fire"):
        freeze(model, bn="frozen")
    assert fingerprint(model) == before
    assert "_torchsmith_freeze_undo" not in vars(model)


class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d shape: a BatchNorm2d subclass with extra layers."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(super().forward(x))


def test_freeze_frozen_keeps_batchnorm_subclasses_with_extra_layers():
    """Was: FrozenBatchNorm2d replaced BatchNormAct2d (dropping its activation), then crashed half-way."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BNAct(4), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).eval()
    x = torch.randn(1, 3, 8, 8)
    ref = model(x)
    report = freeze_report(freeze(model, bn="frozen"))
    assert report.bn_replaced == ["3"] and report.bn_not_replaced == ["1"] and "1" in report.bn_eval
    assert isinstance(model[1], BNAct) and isinstance(model[3], FrozenBatchNorm2d)
    assert "1 subclass layers not replaced" in str(report)
    torch.testing.assert_close(model(x), ref)
    assert not model.train()[1].training
    unfreeze(model)
    assert isinstance(model[3], nn.BatchNorm2d) and model[1].training


def test_freeze_warns_about_tied_parameters():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight  # tied, as GPT-2's lm_head and wte
    with pytest.warns(UserWarning, match=r"tied parameters \(1\.weight is 0\.weight\)"):
        freeze(model, exclude=["1"])
    assert not model[1].weight.requires_grad


@pytest.mark.parametrize("source,target", [(3, 5), (3, 4), (2, 7), (4, 6)])
def test_adapt_input_channels_holds_when_c_does_not_divide_n(source, target):
    """Was: 3 -> 5 gave outputs off by up to 0.3 (scaled by C/N instead of per repeated channel)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(source, 4, 3)
    model = adapt_input_channels(nn.Sequential(copy.deepcopy(conv)), target)
    x = torch.randn(1, source, 5, 5)
    torch.testing.assert_close(model(x[:, torch.arange(target) % source]), conv(x), rtol=1e-5, atol=1e-5)


def test_adapt_input_channels_refuses_a_forward_that_mixes_channels():
    class Mixes(nn.Module):  # inception_v3's transform_input
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            x = torch.cat([x[:, 0:1] * 0.5, x[:, 1:2], x[:, 2:3]], 1)
            return self.conv(x)

    model = Mixes()
    before, weight = fingerprint(model), model.conv.weight.clone()
    with pytest.raises(SurgeryError, match="changes its input before 'conv'"):
        adapt_input_channels(model, 1)
    assert fingerprint(model) == before and torch.equal(model.conv.weight, weight) and model.conv.in_channels == 3


def test_add_inputs_reaches_the_backbone_of_a_zero_head():
    """Was: the ReLU of the logits was fused; with a zero-initialised head (torchvision's ViT) no backbone
    parameter got a gradient."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 6))
    nn.init.zeros_(model[3].weight)
    nn.init.zeros_(model[3].bias)
    both = add_inputs(model, extra_features=2, num_classes=3)
    assert both.num_features == 4 and isinstance(model[3], nn.Identity)
    both(X, torch.randn(2, 2)).square().mean().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
