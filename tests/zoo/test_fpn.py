from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from helpers import state_dict_signature
from torchsmith import (
    BackboneWithFPN,
    FeaturePyramidNetwork,
    FrozenBatchNorm2d,
    LastLevelMaxPool,
    LastLevelP6P7,
    ModelConfigError,
    create_model,
)
from torchsmith.zoo import resnet_fpn_backbone


@pytest.mark.parametrize("tl", [0, 3, 5])
def test_resnet50_fpn_matches_torchvision(tl, reference):
    ref = reference[f"resnet50_fpn_tl{tl}"]
    model = resnet_fpn_backbone(backbone_name="resnet50", trainable_layers=tl)
    assert isinstance(model, BackboneWithFPN)
    assert state_dict_signature(model) == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ref["trainable_names"]
    assert sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == ref["trainable_params"]


@pytest.mark.parametrize("hw", [(224, 224), (200, 300)])
def test_resnet50_fpn_output_shapes(hw, reference):
    ref = reference["resnet50_fpn_tl3"][f"output_shapes_{hw[0]}x{hw[1]}"]
    model = create_model("resnet50_fpn").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    assert {k: list(v.shape) for k, v in out.items()} == ref
    assert list(out) == list(ref)  # level order too
    assert [(f.module, f.stride) for f in model.feature_info] == [("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64)]


def test_resnet152_fpn_is_the_tutorials_backbone():
    model = create_model("resnet152_fpn").eval()
    assert [len(getattr(model.body, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert isinstance(model.body.bn1, FrozenBatchNorm2d)
    assert "avgpool" not in dict(model.body.named_children()) and "fc" not in dict(model.body.named_children())
    # the tutorial freezes all but layer2-4
    frozen_prefixes = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_prefixes == {"conv1", "layer1"}
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "0": (56, 56), "1": (28, 28), "2": (14, 14), "3": (7, 7), "pool": (4, 4)
    }
    assert model.torchsmith_config == {"name": "resnet152_fpn", "kwargs": {}, "steps": []}


def test_fpn_top_down_math_by_hand():
    torch.manual_seed(0)
    fpn = FeaturePyramidNetwork([4, 8], 6, extra_blocks=LastLevelMaxPool()).eval()
    c1, c2 = torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)
    out = fpn(OrderedDict(a=c1, b=c2))
    inner_b = fpn.inner_blocks[1](c2)
    inner_a = fpn.inner_blocks[0](c1) + inner_b.repeat_interleave(2, -1).repeat_interleave(2, -2)
    torch.testing.assert_close(out["b"], fpn.layer_blocks[1](inner_b))
    torch.testing.assert_close(out["a"], fpn.layer_blocks[0](inner_a))
    torch.testing.assert_close(out["pool"], out["b"][..., ::2, ::2])
    # init: kaiming-uniform(a=1) weights, zero bias
    assert all(torch.count_nonzero(b[0].bias) == 0 for b in fpn.inner_blocks)


def test_p6p7_and_returned_layers():
    model = resnet_fpn_backbone(backbone_name="resnet18", returned_layers=[2, 3, 4], extra_blocks="p6p7", out_channels=64).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 128, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (1, 64, 16, 16), "1": (1, 64, 8, 8), "2": (1, 64, 4, 4), "p6": (1, 64, 2, 2), "p7": (1, 64, 1, 1)
    }
    assert isinstance(model.fpn.extra_blocks, LastLevelP6P7) and not model.fpn.extra_blocks.use_P5
    assert [f.stride for f in model.feature_info] == [8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"trainable_layers": 6}, "0..5"),
        ({"backbone_name": "resnet5O"}, "resnet50"),
        ({"returned_layers": [0, 1]}, "returned_layers"),
        ({"extra_blocks": "p5"}, "'pool'"),
    ],
)
def test_bad_fpn_arguments(kwargs, needle):
    with pytest.raises(ModelConfigError, match=needle):
        resnet_fpn_backbone(**kwargs)
