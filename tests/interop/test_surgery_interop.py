"""Surgery on torchvision, timm and transformers models.

References: timm's ``reset_classifier`` for heads, an optimizer step for freezing (which parameters
move), forward hooks for what goes into a head, the original model (a deep copy) for equivalences.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torchvision.models as tvm
from models import BY_NAME, models
from torch import nn

from torchsmith import (
    FrozenBatchNorm2d,
    SurgeryError,
    TorchsmithError,
    adapt_input_channels,
    add_inputs,
    fold_batchnorm,
    freeze,
    freeze_report,
    get_module,
    optimize_for_inference,
    replace_head,
    replace_module,
    unfreeze,
)
from helpers import cloned_state as state, fingerprint, same_state

# helpers


def prediction(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"] if "logits" in output else output["out"]
    return output[0]


# get_module / replace_module


@pytest.mark.parametrize("peer", models(tag="aux") + models(tag="tokens-in"))
def test_get_module_and_replace_module_are_the_model_own_paths(peer):
    model = peer.build()
    names = [n for n, _ in model.named_modules() if n]
    path = names[len(names) // 2]
    assert get_module(model, path) is model.get_submodule(path)
    with pytest.raises(SurgeryError, match="Did you mean"):
        get_module(model, path + "x")
    marker = nn.Identity()
    replace_module(model, path, marker, check=False)  # a marker, not a layer that fits: issue 19's check would refuse it
    assert model.get_submodule(path) is marker


# heads


@pytest.mark.parametrize("peer", models(family="timm", kind="classifier"))
def test_replace_head_equals_timm_reset_classifier(peer):
    ours, theirs = peer.build(), peer.build()
    replace_head(ours, 7)
    theirs.reset_classifier(7)
    assert repr(ours.get_classifier()) == repr(theirs.get_classifier())
    assert ours.num_classes == theirs.num_classes == 7
    theirs.load_state_dict(ours.state_dict())  # same keys and shapes everywhere
    (x,), _ = peer.example()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("peer", models(family="torchvision", kind="classifier"))
def test_replace_head_on_torchvision_classifiers_changes_every_head(peer):
    model = peer.build()
    (x,), _ = peer.example()
    if "tokens-out" in peer.tags:  # ViT runs at its image_size only: the guessed 224x224 probe is refused
        with pytest.raises(SurgeryError, match=r"Wrong image height.*Pass example_inputs="):
            replace_head(model, 7)
    replace_head(model, 7, example_inputs=x)
    with torch.no_grad():
        assert model(x).shape == (1, 7)
        if "aux" in peer.tags:  # inception / googlenet: the train-mode aux heads too
            outputs = model.train()(torch.cat([x, x + 1]))
            assert [o.shape for o in outputs if isinstance(o, torch.Tensor)] == [(2, 7)] * (len(outputs))


@pytest.mark.parametrize("peer", models(tag="tokens-in"))
def test_replace_head_on_token_models(peer):
    """Regression: a raw RuntimeError about index dtypes. Token ids are guessed from the embedding when the
    model takes only them; a model that needs more says to pass example_inputs, and works with them."""
    model = peer.build()
    args, kwargs = peer.example()
    before = fingerprint(model)
    if kwargs:  # T5 needs decoder_input_ids
        with pytest.raises(SurgeryError, match="example_inputs="):
            replace_head(model, 7)
        assert fingerprint(model) == before
        replace_head(model, 7, example_inputs={"input_ids": args[0], **kwargs})
    else:
        replace_head(model, 7)
    with torch.no_grad():
        assert prediction(model(*args, **kwargs)).shape[-1] == 7


def test_replace_head_probe_leaves_no_trace_on_a_detector():
    """Regression: replace_head(fasterrcnn, 7) left the anchor cache on meta; later forwards failed."""
    peer = BY_NAME["tv.fasterrcnn_resnet50_fpn"]
    model = peer.build()
    args, kwargs = peer.example()
    before, saved = fingerprint(model), state(model)
    with pytest.raises(SurgeryError, match="pass path="):
        replace_head(model, 7)
    with pytest.raises(SurgeryError, match="pass path="):
        replace_head(model, 7, example_inputs=args)
    assert fingerprint(model) == before and same_state(model, saved)
    assert not any(t.is_meta for t in model.rpn.anchor_generator.cell_anchors)
    with torch.no_grad():
        assert isinstance(model(*args, **kwargs), list)
    replace_head(model, 7, path="roi_heads.box_predictor.cls_score")  # naming it works
    with torch.no_grad():
        model(*args, **kwargs)


def test_replace_head_on_segmentation_names_the_way_out():
    peer = BY_NAME["tv.deeplabv3_resnet50"]
    model = peer.build()
    before, saved = fingerprint(model), state(model)
    with pytest.raises(SurgeryError, match="cannot tell the classifier.*Pass path="):
        replace_head(model, 5)
    assert fingerprint(model) == before and same_state(model, saved)
    replace_head(model, 5, path="classifier.4")
    replace_head(model, 5, path="aux_classifier.4")
    (x,), _ = peer.example()
    with torch.no_grad():
        out = model(x)
    assert out["out"].shape == (1, 5, 64, 64) and out["aux"].shape == (1, 5, 64, 64)


# freezing


def sgd_step(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, bool]:
    """Which parameters one SGD step moves (the reference for what is trainable)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    out = prediction(model(*args, **kwargs))
    out.float().square().mean().backward()
    opt.step()
    return {n: not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters()}


FREEZE_CASES = {
    "tv.resnet50": ["layer4", "fc"],
    "timm.efficientnet_b0": ["blocks.6", "conv_head", "bn2", "classifier"],
    "timm.mobilenetv3_small_100": ["blocks.5", "conv_head", "classifier"],
    "hf.bert": ["bert.encoder.layer.1", "bert.pooler", "classifier"],
}


@pytest.mark.parametrize("name,bn", [("tv.resnet50", "frozen"), ("timm.efficientnet_b0", "frozen"),
                                     ("timm.mobilenetv3_small_100", "eval"), ("hf.bert", "eval")])  # fmt: skip
def test_freeze_equals_what_an_optimizer_step_moves(name, bn):
    """Regression (bn='frozen' on timm's BatchNormAct2d crashed half-way, leaving everything frozen):
    the parameters one SGD step moves are exactly the trainable ones; frozen BatchNorm statistics stay."""
    peer = BY_NAME[name]
    model = peer.build()
    args, kwargs = peer.example()
    if isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
        args = (torch.cat([args[0], args[0].flip(-1)]),)  # train-mode BatchNorm needs two samples
    with torch.no_grad():
        reference = prediction(model(*args, **kwargs))
    saved, types = state(model), {n: type(m) for n, m in model.named_modules()}
    report = freeze_report(freeze(model, exclude=FREEZE_CASES[name], bn=bn))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(any(n.startswith(e + ".") for e in FREEZE_CASES[name]) for n in trainable)
    with torch.no_grad():  # freezing changes no value: the eval forward is the same
        torch.testing.assert_close(prediction(model(*args, **kwargs)), reference, rtol=1e-5, atol=1e-5)
    model.train()
    moved = sgd_step(model, args, kwargs)
    assert {n for n, m in moved.items() if m} == trainable
    frozen_bn = [n for n, m in model.named_modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))
                 and not any(n.startswith(e + ".") or n == e for e in FREEZE_CASES[name])]  # fmt: skip
    for path in frozen_bn:
        torch.testing.assert_close(get_module(model, path).running_mean, saved[f"{path}.running_mean"], rtol=0, atol=0)
    bnact = [n for n, m in model.named_modules() if type(m).__name__ == "BatchNormAct2d" and n in frozen_bn]
    if bn == "frozen":
        assert report.bn_not_replaced == bnact
    unfreeze(model)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_warns_about_tied_weights():
    model = BY_NAME["hf.gpt2"].build()
    with pytest.warns(UserWarning, match=r"tied.*lm_head\.weight is transformer\.wte\.weight"):
        report = freeze_report(freeze(model, exclude=["lm_head"]))
    assert report.trainable_params == 0  # the tie is real: nothing left to train, as the warning says
    unfreeze(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        freeze(model, exclude=["lm_head", "transformer.wte"])  # both sides excluded: no warning


# inputs


@pytest.mark.parametrize("name,in_chans", [("tv.resnet50", 1), ("tv.vit_b_16", 5), ("timm.efficientnet_b0", 2),
                                           ("timm.convnext_nano", 5), ("tv.convnext_tiny", 6)])  # fmt: skip
def test_adapt_input_channels_tiling_rule_on_peer_models(name, in_chans):
    """The documented rule: with N <= C, model(x) == original(x[:, arange(C) % N]);
    with N > C, model(x[:, arange(N) % C]) == original(x), whether C divides N or not (5 failed before)."""
    peer = BY_NAME[name]
    original = peer.build()
    (example,), _ = peer.example()  # ViT runs at its image_size only: the probe needs the real input size
    model = adapt_input_channels(copy.deepcopy(original), in_chans, example_inputs=example)
    torch.manual_seed(3)
    with torch.no_grad():
        if in_chans <= 3:
            x = torch.randn(1, in_chans, 64, 64)
            got, expected = model(x), original(x[:, torch.arange(3) % in_chans])
        else:
            x = torch.randn(1, 3, 64, 64)
            got, expected = model(x[:, torch.arange(in_chans) % 3]), original(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_adapt_input_channels_refuses_models_that_change_their_input_first():
    """Regression: inception_v3(transform_input=True) adapted to 1 channel crashed later with IndexError."""
    model = tvm.inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True).eval()
    before, saved = fingerprint(model), state(model)
    for in_chans in (1, 6):
        with pytest.raises(SurgeryError, match="changes its input before 'Conv2d_1a_3x3.conv'.*transform_input"):
            adapt_input_channels(model, in_chans)
    assert fingerprint(model) == before and same_state(model, saved)
    detector = BY_NAME["tv.fasterrcnn_resnet50_fpn"].build()  # normalises each channel first
    with pytest.raises(SurgeryError, match="changes its input"):
        adapt_input_channels(detector, 1, example_inputs=BY_NAME["tv.fasterrcnn_resnet50_fpn"].example()[0])


@pytest.mark.parametrize("name", ["tv.vit_b_16", "tv.resnet50", "timm.vit_small_patch16_224", "hf.bert"])
def test_add_inputs_fuses_the_features_that_go_into_the_head(name):
    """Regression: on models without get_classifier the ReLU of the logits was fused; torchvision's ViT (zero
    head) then gave no backbone gradient. Reference: a forward pre-hook on the head of the original model."""
    peer = BY_NAME[name]
    model = peer.build()
    args, kwargs = peer.example()
    head = {"tv.vit_b_16": "heads.head", "tv.resnet50": "fc", "timm.vit_small_patch16_224": "head",
            "hf.bert": "classifier"}[name]  # fmt: skip
    seen = []
    handle = get_module(model, head).register_forward_pre_hook(lambda m, i: seen.append(i[0].detach().clone()))
    with torch.no_grad():
        model(*args, **kwargs)
    handle.remove()
    both = add_inputs(model, extra_features=2, num_classes=3, example_inputs=args)
    assert both.num_features == seen[0].shape[1] and isinstance(get_module(model, head), nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(prediction(both.backbone(*args)), seen[0])
    extra = torch.randn(args[0].shape[0], 2)
    out = both.train()(args[0], extra)
    assert out.shape == (args[0].shape[0], 3)
    out.square().mean().backward()
    first = next(p for n, p in both.backbone.named_parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0  # the backbone learns


# inference


@pytest.mark.parametrize("name", ["tv.resnet50", "tv.efficientnet_b0", "timm.resnet50", "timm.mobilenetv3_small_100"])
def test_optimize_for_inference_and_fold_batchnorm_keep_outputs(name):
    """timm's BatchNormAct2d is not folded (its activation would be lost); plain BatchNorms are.
    (optimize_for_inference works in place: the copy is ours to take.)"""
    peer = BY_NAME[name]
    model = peer.build()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial statistics, so folding is really tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    (x,), _ = peer.example()
    saved = state(model)
    with torch.no_grad():
        ref = model(x)
        fast = optimize_for_inference(copy.deepcopy(model))
        torch.testing.assert_close(fast(x), ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    assert same_state(model, saved)
    folded = [n for n, m in fast.named_modules() if isinstance(m, nn.Identity) and isinstance(model.get_submodule(n), nn.BatchNorm2d)]
    plain = [n for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    assert set(folded) <= set(plain) and bool(folded) == bool(plain)  # all of timm's mobilenet BNs are BatchNormAct2d
    if plain:  # a train-mode BatchNorm after a conv: refused, nothing changed
        with pytest.raises(SurgeryError, match="needs eval mode"):
            fold_batchnorm(model.train())
        assert same_state(model, saved)


def test_every_refusal_is_a_torchsmith_error():
    """What the docs (docs/interop.md) list as refused raises a TorchsmithError, never a raw one."""
    t5 = BY_NAME["hf.t5"].build()
    for call in (lambda: replace_head(t5, 3), lambda: add_inputs(t5, extra_features=1, num_classes=2),
                 lambda: adapt_input_channels(t5, 1)):  # fmt: skip
        with pytest.raises(TorchsmithError):
            call()
