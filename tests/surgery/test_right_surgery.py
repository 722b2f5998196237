"""Issue 19, section 1: surgery right on every model, or refused. Hand-written torch.nn cases of each class of
defect; the peer models (timm, torchvision, transformers) of the same classes are in tests/interop/test_right_surgery.py.

References: the original model (a deep copy) for outputs, forward hooks for what a layer reads, the tiling rule
of adapt_input_channels, and the model's fingerprint for "left as it was".
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from helpers import fingerprint, randomise_bn_, relative
from torchsmith import (
    FrozenBatchNorm2d,
    SurgeryError,
    adapt_input_channels,
    add_inputs,
    create_model,
    fold_batchnorm,
    freeze,
    get_module,
    load_model,
    model_config,
    optimize_for_inference,
    replace_head,
    replace_module,
    save_model,
    unfreeze,
)

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))




# 1. folding only what is proven, and checked


class StdConv2d(nn.Conv2d):
    """timm's StdConv2d: the weight is standardised in the forward, so a fold into .weight is undone by it."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=1e-6)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class Untraceable(nn.Module):
    """A forward torch.fx cannot trace (``.item()``), over a Sequential of conv -> BatchNorm -> ReLU."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        return self.body(x) if x.abs().sum().item() >= 0 else x


def test_fold_leaves_a_conv_with_its_own_forward():
    """Was: relative error 0.35 (timm's StdConv2d); the pair was taken from container order."""
    model = randomise_bn_(Untraceable(StdConv2d(3, 4, 3))).eval()
    ref = model(X)
    fold_batchnorm(model)
    assert isinstance(model.body[1], nn.BatchNorm2d)  # not folded: StdConv2d is not a plain conv
    assert relative(model(X), ref) < 1e-5


def test_fold_leaves_a_conv_whose_output_is_read_elsewhere():
    """Was: relative error 0.59; a Sequential used as a container, the conv output also added to the result."""

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))

        def forward(self, x):
            y = self.parts[0](x)
            out = self.parts[1](y) + y
            return out if out.abs().sum().item() >= 0 else x  # untraceable

    model = randomise_bn_(Reused()).eval()
    ref = model(X)
    fold_batchnorm(model)
    assert isinstance(model.parts[1], nn.BatchNorm2d)
    assert relative(model(X), ref) < 1e-5


def test_fold_takes_the_proven_pairs_of_an_untraceable_model_and_keeps_outputs():
    model = randomise_bn_(Untraceable(nn.Conv2d(3, 4, 3))).eval()
    ref = model(X)
    fold_batchnorm(model)
    assert isinstance(model.body[1], nn.Identity) and model.body[0].bias is not None
    assert relative(model(X), ref) < 1e-5


class Conv3dSimple(nn.Conv3d):
    """torchvision's Conv3DSimple: a Conv3d subclass with its own constructor and the plain forward."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=(3, 3, 3), padding=1, bias=False)


def test_fold_takes_conv_subclasses_with_the_plain_forward():
    """Was: all 16 BatchNorm3d of torchvision's r3d_18 stayed (fx traced into the subclass)."""

    class Video(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(Conv3dSimple(3, 4), nn.BatchNorm3d(4), nn.ReLU())
            self.block = nn.Sequential(Conv3dSimple(4, 4), nn.BatchNorm3d(4))

        def forward(self, x):
            return self.block(self.stem(x)) + 1

    model = randomise_bn_(Video()).eval()
    x = torch.randn(1, 3, 4, 8, 8)
    ref = model(x)
    fold_batchnorm(model)
    assert isinstance(model.stem[1], nn.Identity) and isinstance(model.block[1], nn.Identity)
    assert relative(model(x), ref) < 1e-5


def test_a_fold_that_changes_outputs_is_rolled_back():
    """The check catches what no proof sees: a forward hook that doubles the conv's output."""
    model = randomise_bn_(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    model[0].register_forward_hook(lambda m, i, o: o * 2)
    before, weight = fingerprint(model), model[0].weight
    with pytest.raises(SurgeryError, match=r"would change the outputs .* by [0-9.e+-]+ of max\|y\|.*nothing was folded"):
        fold_batchnorm(model)
    assert fingerprint(model) == before and model[0].weight is weight and isinstance(model[1], nn.BatchNorm2d)
    with pytest.raises(SurgeryError, match="would change the outputs"):
        optimize_for_inference(model.train())
    assert model.training and fingerprint(model.eval()) == before


def test_a_right_fold_is_kept_when_the_outputs_select_discretely():
    """Outputs that depend on every bit (here the float's bit pattern as int32; a detector's labels and box
    count, where rounding flips near-ties) cannot match after any reordering of float sums; each fold is then
    checked on its own input. Was: refused (torchvision's fasterrcnn/maskrcnn/ssdlite in the sweep).
    Reference: the original conv + BatchNorm's float output."""

    class Bits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            return y.view(torch.int32)  # (B, 8, H-2, W-2) bit patterns

    model = randomise_bn_(Bits()).eval()
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        want = model.bn(model.conv(x))
    fold_batchnorm(model, input_size=(2, 3, 10, 10))
    assert isinstance(model.bn, nn.Identity)
    with torch.no_grad():
        assert relative(model.conv(x), want) < 1e-5


def test_a_fold_that_flips_integer_outputs_says_so_and_what_to_use():
    """Integer outputs (a detector's labels) that change are named as such, with the next step: fold a
    submodule whose outputs are continuous. Was: "fold by hand", which the compatibility sweep's judge (a
    refusal must say what to do) counted as a crash on torchvision's ssdlite320_mobilenet_v3_large."""

    class Picks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

        def forward(self, x):
            return self.backbone(x).flatten(1).argmax(1)  # (B,) indices

    model = Picks().eval()
    randomise_bn_(model)
    model.backbone[0].register_forward_hook(lambda m, i, o: -o)  # what no proof sees
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"integer outputs of Picks .*use fold_batchnorm on a submodule.*model\.backbone"):
        fold_batchnorm(model, input_size=(2, 3, 8, 8))
    assert fingerprint(model) == before


@pytest.mark.parametrize("parametrize", [parametrizations.weight_norm, parametrizations.spectral_norm])
def test_fold_and_optimize_take_parametrized_convs(parametrize):
    """Was: KeyError: "attribute 'weight' already exists"."""
    model = randomise_bn_(nn.Sequential(parametrize(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4), nn.ReLU())).eval()
    ref = model(X)
    fast = optimize_for_inference(copy.deepcopy(model))
    assert type(fast[0]) is nn.Conv2d and isinstance(fast[1], nn.Identity)  # folded into a plain conv
    assert relative(fast(X), ref) < 1e-5


# 2. edits that check themselves


def test_replace_module_that_breaks_the_model_is_refused_naming_the_layer():
    model = create_model("resnet18", num_classes=4)
    before, config = fingerprint(model), model_config(model)
    with pytest.raises(SurgeryError, match=r"unable to run on \(\(1, 3, 224, 224\)\): layer1\.0\.bn1 \(BatchNorm2d\).*as it was"):
        replace_module(model, "layer1.0.conv1", nn.Conv2d(64, 32, 3, padding=1, bias=False))
    assert fingerprint(model) == before and model_config(model) == config
    replace_module(model, "layer1.0.conv1", nn.Conv2d(64, 32, 3, padding=1, bias=False), check=False)  # one step of two
    replace_module(model, "layer1.0.bn1", nn.BatchNorm2d(32), check=False)
    replace_module(model, "layer1.0.conv2", nn.Conv2d(32, 64, 3, padding=1, bias=False))  # now it fits again
    assert model(X).shape == (2, 4)


class RepStem(nn.Module):
    """RepVGG's stem: a 3x3 and a 1x1 branch both read the image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_kxk = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_1x1 = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = F.relu(self.conv_kxk(x) + self.conv_1x1(x))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("in_chans", [1, 5])
def test_adapt_input_channels_changes_every_conv_that_reads_the_input(in_chans):
    """Was: only the first conv changed; the 1x1 branch kept 3 channels and the forward failed."""
    original = RepStem()
    model = adapt_input_channels(copy.deepcopy(original), in_chans)
    assert model.conv_kxk.in_channels == model.conv_1x1.in_channels == in_chans
    x = torch.randn(2, min(in_chans, 3), 8, 8)
    if in_chans <= 3:
        got, expected = model(x), original(x[:, torch.arange(3) % in_chans])
    else:
        got, expected = model(x[:, torch.arange(in_chans) % 3]), original(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


class DictInput(nn.Module):
    """Takes a dict holding a list of images."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.body = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, batch):
        return self.body(F.relu(self.stem(batch["img"][0])))


def test_adapt_input_channels_finds_the_input_inside_a_dict():
    """Was: "the forward changes its input before 'stem'" (only top-level arguments were looked at)."""
    original = DictInput()
    model = adapt_input_channels(copy.deepcopy(original), 1, example_inputs=({"img": [torch.randn(1, 3, 16, 16)]},))
    gray = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(model({"img": [gray]}), original({"img": [gray.expand(1, 3, 16, 16)]}), rtol=1e-5, atol=1e-5)


class LM(nn.Module):
    """BART's generation head: logits = lm_head(h) + final_logits_bias (a buffer of the vocabulary's width)."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 8)
        self.lm_head = nn.Linear(8, vocab, bias=False)
        self.register_buffer("final_logits_bias", torch.randn(1, vocab))
        self.register_buffer("positions", torch.arange(vocab, dtype=torch.float32))  # same width, never added

    def forward(self, ids):
        return self.lm_head(self.embed(ids)) + self.final_logits_bias


def test_replace_head_resizes_a_buffer_added_to_the_head(registered, tmp_path):
    """Was: final_logits_bias kept the old width and the model no longer ran."""
    registered(LM, "test_right_lm")
    model = create_model("test_right_lm")
    replace_head(model, 5, path="lm_head")
    assert model.final_logits_bias.shape == (1, 5) and torch.equal(model.final_logits_bias, torch.zeros(1, 5))
    assert model.positions.shape == (11,)  # the same width, but not added to the head's output
    ids = torch.randint(0, 11, (2, 6))
    assert model(ids).shape == (2, 6, 5)
    assert model_config(model)["steps"] == [
        {"op": "replace_head", "num_classes": 5, "path": "lm_head", "buffers": ["final_logits_bias"]}]
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded(ids), model(ids))


class Distilled(nn.Module):
    """deit's distilled head: two classifiers averaged, and timm's reset_classifier changing both."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.head, self.head_dist = nn.Linear(8, num_classes), nn.Linear(8, num_classes)
        self.num_classes = num_classes

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head, self.head_dist = nn.Linear(8, num_classes), nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.body(x)
        return (self.head(x) + self.head_dist(x)) / 2


def test_replace_head_uses_reset_classifier_and_load_model_replays_it(registered, tmp_path):
    """Was: refused ("candidates head, head_dist"), and path="head" left head_dist at the old width."""
    registered(Distilled, "test_right_distilled")
    model = create_model("test_right_distilled")
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"unable to run.*as it was\. It has reset_classifier"):
        replace_head(model, 3, path="head")
    assert fingerprint(model) == before
    replace_head(model, 3)
    assert model.head.out_features == model.head_dist.out_features == model.num_classes == 3
    assert model_config(model)["steps"] == [{"op": "replace_head", "num_classes": 3, "reset_classifier": True}]
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    x = torch.randn(2, 6)
    assert loaded.head_dist.out_features == 3 and torch.equal(loaded(x), model(x))


def test_a_reset_classifier_that_fails_is_said_as_ours_and_changes_nothing():
    class Picky(Distilled):
        def reset_classifier(self, num_classes: int, global_pool: str) -> None:  # needs more than timm's convention
            super().reset_classifier(num_classes)

    model = Picky()
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"Picky.reset_classifier\(3\) failed \(TypeError: .*pass path="):
        replace_head(model, 3)
    assert fingerprint(model) == before


def test_replace_head_keeps_our_zoo_steps_through_reset_classifier():
    model = replace_head(create_model("resnet18"), 7)
    assert model_config(model)["steps"] == [{"op": "replace_head", "num_classes": 7, "path": "fc"}]


def test_freeze_frozen_batchnorm_that_breaks_the_forward_is_refused():
    class ReadsMomentum(nn.Module):  # reads an attribute FrozenBatchNorm2d does not have
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) * (1 + self.bn.momentum)

    model = ReadsMomentum()
    before = fingerprint(model)
    with pytest.raises(SurgeryError, match=r"freeze\(bn='frozen'\) would leave .* the model \(ReadsMomentum\).*momentum"):
        freeze(model, bn="frozen")
    assert fingerprint(model) == before and all(p.requires_grad for p in model.parameters())
    assert "_torchsmith_freeze_undo" not in vars(model)
    freeze(model, bn="eval")  # what does fit: kept in eval mode
    assert not model.train().bn.training


def test_add_inputs_checks_the_wrapper_and_leaves_the_model_on_failure(monkeypatch):
    from torchsmith.zoo import multi_input

    model = create_model("resnet18")
    before = fingerprint(model)

    def broken(self, image, extra):
        raise RuntimeError("fusion broke")

    monkeypatch.setattr(multi_input.MultiInputModel, "forward", broken)
    with pytest.raises(SurgeryError, match="add_inputs would leave MultiInputModel unable to run.*fusion broke"):
        add_inputs(model, extra_features=2, num_classes=3)
    assert fingerprint(model) == before and model_config(model)["steps"] == []


# 3. parametrized layers


def test_adapt_input_channels_keeps_weight_norm_and_refuses_spectral_norm():
    original = nn.Sequential(parametrizations.weight_norm(nn.Conv2d(3, 4, 3)), nn.ReLU())
    model = adapt_input_channels(copy.deepcopy(original), 1)
    assert type(model[0]).__name__ == "ParametrizedConv2d" and model[0].in_channels == 1
    gray = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(gray), original(gray.expand(2, 3, 8, 8)), rtol=1e-5, atol=1e-5)
    spectral = nn.Sequential(parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)), nn.ReLU()).eval()
    before = fingerprint(spectral)
    with pytest.raises(SurgeryError, match=r"'0' has the parametrization _SpectralNorm on 'weight'.*remove_parametrizations"):
        adapt_input_channels(spectral, 1)
    assert fingerprint(spectral) == before and spectral[0].weight.shape[1] == 3


# 6. paths


class Aliased(nn.Module):
    """One block registered under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.dec = self.enc
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(self.dec(x))


def test_a_module_registered_twice_is_found_by_either_name():
    """Was: freeze(["dec"]) said "did you mean 'enc'?" though get_submodule("dec") works."""
    model = Aliased()
    assert get_module(model, "dec.1") is model.enc[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enc's parameters are dec's: no "tied parameters" warning
        freeze(model, ["dec"], bn="frozen")
    assert not model.enc[0].weight.requires_grad and model.head.weight.requires_grad
    assert isinstance(model.enc[1], FrozenBatchNorm2d) and model.dec[1] is model.enc[1]  # still one module
    unfreeze(model)
    assert type(model.dec[1]) is nn.BatchNorm2d and model.dec[1] is model.enc[1] and model.enc[0].weight.requires_grad


def test_surgery_paths_on_a_compiled_model_with_or_without_the_prefix():
    """Was: paths needed '_orig_mod.' and the error did not say so."""
    model = create_model("resnet18")
    compiled = torch.compile(model)  # compiles on the first call only: nothing runs here
    assert get_module(compiled, "layer1.0") is get_module(compiled, "_orig_mod.layer1.0") is model.layer1[0]
    assert replace_head(compiled, 5, path="_orig_mod.fc") is compiled
    assert model.fc.out_features == 5 and model_config(model)["steps"][-1]["path"] == "fc"
    freeze(compiled, ["layer1", "_orig_mod.layer2"])
    assert not model.layer1[0].conv1.weight.requires_grad and not model.layer2[0].conv1.weight.requires_grad
    assert model.layer3[0].conv1.weight.requires_grad
    replace_module(compiled, "layer4.0.relu", nn.GELU())
    assert isinstance(model.layer4[0].relu, nn.GELU)


def test_optimize_for_inference_with_a_five_dimensional_parameter():
    """Was: RuntimeError 'required rank 4 tensor to use channels_last format' (timm's lambda_resnet26t holds a
    5-D relative-position parameter; Module.to(memory_format=) converts 5-D tensors too). 4-D tensors go
    channels-last, the rest stay, and the outputs are kept (reference: the model before)."""

    class Lambda(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.pos = nn.Parameter(torch.randn(1, 4, 1, 1, 1))  # (1, C, 1, 1, 1)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.pos.squeeze(-1)

    model = randomise_bn_(Lambda()).eval()
    x = torch.randn(2, 3, 8, 8)
    ref = model(x).detach()
    fast = optimize_for_inference(model)
    assert fast.conv.weight.is_contiguous(memory_format=torch.channels_last) and fast.pos.dim() == 5
    torch.testing.assert_close(fast(x), ref, rtol=1e-5, atol=1e-6)
