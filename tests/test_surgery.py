from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

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
    unfreeze,
)

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def randomise_bn_(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really tested."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


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
    assert model.num_classes == 20 and model.torchsmith_config["kwargs"]["num_classes"] == 20
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
    model = replace_head(TwoHeads(), 5, path="a")
    assert model.a.out_features == 5


# freezing


def test_freeze_all_but_layer2_to_4_matches_torchvision_trainable_layers(reference):
    model = create_model("resnet50", norm_layer="frozen_bn")
    report = freeze(model, exclude=["layer2", "layer3", "layer4"])
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ref = [n.removeprefix("body.") for n in reference["resnet50_fpn_tl3"]["trainable_names"] if n.startswith("body.")]
    assert names == ref
    assert report.trainable == ["layer2", "layer3", "layer4"]
    assert report.frozen == ["conv1", "layer1", "fc"]  # FrozenBatchNorm2d has no parameters
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_freeze_report_reads_well():
    model = create_model("resnet18")
    report = freeze(model, exclude=["layer2", "layer3", "layer4"])
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
    report = freeze(model, ["layer1", "bn*"])
    assert report.bn_eval == ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2"]
    model.train()
    assert not model.bn1.training and not model.layer1[1].bn2.training and model.layer2[0].bn1.training
    model(X)
    after = model.state_dict()
    assert torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert not torch.equal(after["layer2.0.bn1.running_mean"], before["layer2.0.bn1.running_mean"])
    assert unfreeze(model) is model
    assert model.bn1.training and "train" not in model.bn1.__dict__
    assert model.layer1[0].conv1.weight.requires_grad and not model.layer4[0].conv1.weight.requires_grad
    copy.deepcopy(model).train()  # no leftovers that break copies


def test_bn_frozen_policy_swaps_and_unfreeze_restores_the_same_modules():
    model = randomise_bn_(create_model("resnet18")).eval()
    originals = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    ref = model(X)
    report = freeze(model, bn="frozen")
    assert sorted(report.bn_replaced) == sorted(originals)
    assert isinstance(model.layer3[0].downsample[1], FrozenBatchNorm2d)
    assert all(not p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.train()(X), ref)  # frozen BN ignores train mode
    unfreeze(model)
    assert all(model.get_submodule(n) is m for n, m in originals.items())
    assert all(p.requires_grad for p in model.parameters()) and model.training and model.bn1.training


def test_freeze_unknown_patterns_are_all_named():
    model = create_model("resnet18")
    with pytest.raises(SurgeryError) as err:
        freeze(model, ["layer5", "layr1", "layer2"])
    assert "'layer5': did you mean 'layer4'" in str(err.value) and "'layr1'" in str(err.value)
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
        assert adapted.torchsmith_config["kwargs"]["in_chans"] == 6
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


def test_optimize_for_inference_equal_outputs_original_untouched():
    model = randomise_bn_(create_model("resnet50")).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize_for_inference(model)
    assert model.training and isinstance(model.bn1, nn.BatchNorm2d)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
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
    faster = optimize_for_inference(model, compile=True)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # original untouched
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
