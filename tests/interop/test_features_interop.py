"""extract_features / feature_nodes / feature_info on torchvision, timm and transformers models.

References: forward hooks on the model itself, torchvision's ``create_feature_extractor`` and its
``NodePathTracer`` (the naming ``get_graph_node_names`` uses), timm's own ``feature_info``.
"""

from __future__ import annotations

import pytest
import torch
from models import BY_NAME, models
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer, _set_default_tracer_kwargs, create_feature_extractor

from torchsmith import FeatureExtractionError, extract_features, feature_info, feature_nodes
from helpers import cloned_state as state

# helpers


def hooked(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """Reference: the first output of every module that returns one tensor, from one plain forward."""
    seen: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and name not in seen:
                seen[name] = output.detach().clone()

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return {n: t for n, t in seen.items() if calls[n] == 1}


def spread(names: list[str], k: int = 3) -> list[str]:
    """``k`` names spread over the forward (a quarter, half, three quarters of the way)."""
    return list(dict.fromkeys(names[len(names) * (i + 1) // (k + 1)] for i in range(k)))


def torchvision_node_names(model: nn.Module) -> list[str]:
    """torchvision's names for the eval graph, without inputs and constant reads (its NodePathTracer)."""
    tracer = NodePathTracer(**_set_default_tracer_kwargs(None))
    graph = tracer.trace(model.eval())
    return [tracer.node_to_qualname[n] for n in graph.nodes if n.op not in ("placeholder", "get_attr", "output")]


# extract_features


@pytest.mark.parametrize("peer", models(without="list-out") + models(tag="list-out"))
def test_extract_features_equals_hooks_shares_weights_and_keeps_mode(peer):
    model = peer.build()
    args, kwargs = peer.example()
    reference = hooked(model, args, kwargs)
    nodes = spread([n for n in reference if "." in n] or list(reference))
    before = state(model)
    extractor = extract_features(model, nodes)
    assert extractor.training is False  # the model's mode
    with torch.no_grad():
        out = extractor(*args, **kwargs)
    assert list(out) == nodes
    for name in nodes:
        torch.testing.assert_close(out[name], reference[name], rtol=0, atol=0)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # no running statistics moved
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in extractor.parameters())  # shared, not copied


@pytest.mark.parametrize("peer", models(tag="bnact"))
def test_extractor_inside_batchnormact_in_eval_keeps_statistics(peer):
    """Regression: the extractor was in train mode; a node inside timm's BatchNormAct2d then used batch
    statistics (values off by up to 5) and moved the running statistics."""
    model = peer.build()
    (x,), _ = peer.example()
    reference = hooked(model, (x,), {})
    before = state(model)
    extractor = extract_features(model, ["bn1.act", "blocks.1.0.bn1.act"])
    assert extractor.training is False
    out = extractor(x)
    torch.testing.assert_close(out["bn1.act"], reference["bn1.act"], rtol=0, atol=0)
    torch.testing.assert_close(out["blocks.1.0.bn1.act"], reference["blocks.1.0.bn1.act"], rtol=0, atol=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    extractor.train()  # follows the mode it is given: the train-mode graph, batch statistics
    assert extractor.training
    extractor(torch.cat([x, x + 1]))
    assert not torch.equal(model.bn1.running_mean, before["bn1.running_mean"])


@pytest.mark.parametrize("peer", models(family="torchvision", kind="classifier", without="tokens-out"))
def test_function_nodes_equal_torchvision_create_feature_extractor(peer):
    """(ViT is left out: torchvision renames its ``ln_1`` / ``ln_2`` modules, see the test below.)"""
    model = peer.build()
    (x,), _ = peer.example()
    names = torchvision_node_names(model)
    ours = set(feature_nodes(model))
    nodes = spread([n for n in names if n in ours and "." in n], k=3)
    with torch.no_grad():
        got = extract_features(model, nodes)(x)
        assert list(got) == nodes
        for name in nodes:  # one node each: torchvision returns values that later in-place ops overwrote
            expected = create_feature_extractor(model, return_nodes=[name]).eval()(x)[name]
            torch.testing.assert_close(got[name], expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["tv.resnet50", "tv.densenet121", "tv.googlenet", "tv.inception_v3", "timm.resnet50",
                                  "timm.efficientnet_b0", "timm.vit_small_patch16_224", "timm.convnext_nano",
                                  "timm.resnet18_features"])  # fmt: skip
def test_feature_nodes_are_torchvision_names(name):
    """Where torchvision keeps no module whole (torchvision.ops blocks) and no module name ends in _<digits>,
    the lists are equal, once torchvision's inputs and constant reads are left out (docs/features.md)."""
    model = BY_NAME[name].build()
    assert feature_nodes(model) == torchvision_node_names(model)


def test_feature_nodes_differ_from_torchvision_only_as_documented():
    """torchvision keeps torchvision.ops modules whole (Conv2dNormActivation) and renames ViT's ``ln_1``."""
    model = BY_NAME["tv.mobilenet_v3_large"].build()
    ours, theirs = feature_nodes(model), torchvision_node_names(model)
    assert "features.0" in theirs and "features.0" not in ours and "features.0.0" in ours
    (x,), _ = BY_NAME["tv.mobilenet_v3_large"].example()
    with torch.no_grad():  # their leaf name still works here: a module name gives its last node
        torch.testing.assert_close(extract_features(model, ["features.0"])(x)["features.0"], hooked(model, (x,), {})["features.0"])
    vit = BY_NAME["tv.vit_b_16"].build()
    assert "encoder.layers.encoder_layer_0.ln_1" in feature_nodes(vit)
    assert "encoder.layers.encoder_layer_0.ln" in torchvision_node_names(vit)


@pytest.mark.parametrize("peer", models(tag="aux", kind="classifier"))
def test_train_only_aux_heads_are_reachable(peer):
    """Regression: extract_features(googlenet.train(), ['aux1']) said "no node 'aux1': did you mean 'aux1'"."""
    model = peer.build().train()
    (x,), _ = peer.example()
    x = torch.cat([x, x.flip(0) + 1])  # train-mode BatchNorm needs more than one sample
    aux = "aux1" if "aux1" in dict(model.named_children()) else "AuxLogits"
    head = "aux1.fc2" if aux == "aux1" else "AuxLogits.fc"
    assert head in feature_nodes(model, training=True) and head not in feature_nodes(model)
    extractor = extract_features(model, [aux])
    assert extractor.training
    torch.manual_seed(5)
    got = extractor(x)[aux]
    torch.manual_seed(5)  # same dropout masks: the cut forward draws the same numbers up to the aux head
    expected = hooked(model, (x,), {})[aux]
    torch.testing.assert_close(got, expected)
    with pytest.raises(FeatureExtractionError, match="only in train mode"):
        extractor.eval()(x)


# feature_info


@pytest.mark.parametrize("peer", models(family="timm"))
def test_feature_info_reads_timm_and_measures_the_layout(peer):
    """Regression: feature_info crashed on timm's list of dicts; channels=7 for swin's NHWC, 197 for ViT tokens."""
    model = peer.build()
    (x,), _ = peer.example()
    declared = model.feature_info.get_dicts() if hasattr(model.feature_info, "get_dicts") else model.feature_info
    info = feature_info(model, example_inputs=x)
    assert [f.module for f in info] == [d["module"] for d in declared]
    assert [(f.channels, f.stride) for f in info] == [(d["num_chs"], d["reduction"]) for d in declared]
    outputs = hooked(model, (x,), {})
    expected_layout = "channels_last" if "nhwc" in peer.tags else "tokens" if "tokens-out" in peer.tags else "channels_first"
    for f in info:
        assert f.layout == expected_layout
        shape = outputs[f.module].shape
        assert shape[{"channels_first": 1, "channels_last": -1, "tokens": -1}[f.layout]] == f.channels


def test_feature_info_on_torchvision_channels_last_and_refused_tokens():
    swin = BY_NAME["tv.swin_t"].build()
    info = feature_info(swin, (1, 3, 64, 64), ["features.1", "features.3", "norm"])
    shapes = {n: tuple(t.shape) for n, t in hooked(swin, (torch.randn(1, 3, 64, 64),), {}).items()}
    assert shapes["features.1"] == (1, 16, 16, 96)
    assert [(f.channels, f.stride, f.layout) for f in info] == [(96, 4, "channels_last"), (192, 8, "channels_last"), (768, 32, "channels_last")]
    vit = BY_NAME["tv.vit_b_16"].build()  # one input size only, and no declared channels: refused, not guessed
    with pytest.raises(FeatureExtractionError, match=r"cannot tell which dimension of 'encoder'.*\(1, 17, 768\)"):
        feature_info(vit, (1, 3, 64, 64), ["encoder"])
    assert feature_info(vit, (1, 3, 64, 64), ["conv_proj", "heads"]) == [
        feature_info(vit, (1, 3, 64, 64), ["conv_proj"])[0], feature_info(vit, (1, 3, 64, 64), ["heads"])[0]]
    assert [(f.channels, f.stride) for f in feature_info(vit, (1, 3, 64, 64), ["conv_proj", "heads"])] == [(768, 16), (1000, 0)]


def test_feature_info_on_token_models_takes_example_inputs():
    bert = BY_NAME["hf.bert"].build()
    args, kwargs = BY_NAME["hf.bert"].example()
    info = feature_info(bert, return_nodes=["bert.embeddings", "bert.encoder.layer.0.output.dense"], example_inputs=args)
    assert [(f.channels, f.stride, f.layout) for f in info] == [(32, 0, "tokens"), (32, 0, "tokens")]
    t5 = BY_NAME["hf.t5"].build()  # needs decoder_input_ids: a TorchsmithError says to pass them, no raw error
    with pytest.raises(FeatureExtractionError, match="example_inputs="):
        feature_info(t5, return_nodes=["decoder.final_layer_norm"])
    args, kwargs = BY_NAME["hf.t5"].example()
    info = feature_info(t5, return_nodes=["decoder.final_layer_norm"], example_inputs={"input_ids": args[0], **kwargs})
    assert [(f.channels, f.layout) for f in info] == [(32, "tokens")]
