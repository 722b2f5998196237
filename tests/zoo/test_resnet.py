from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import formula_input, formula_weights_, state_dict_signature
from torchsmith import FeatureInfo, FrozenBatchNorm2d, ModelConfigError, create_model

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("name", RESNETS)
def test_state_dict_matches_torchvision(name, reference):
    model = create_model(name)
    ref = reference[name]
    assert state_dict_signature(model) == ref["state_dict"]  # keys, order, shapes, dtypes
    assert sum(p.numel() for p in model.parameters()) == ref["params"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_output_shape(name, reference):
    model = create_model(name).eval()
    with torch.no_grad():
        assert list(model(torch.randn(1, 3, 224, 224)).shape) == reference[name]["output_shape"]


def test_resnet18_formula_logits_equal_torchvision(reference):
    model = formula_weights_(create_model("resnet18")).eval()
    with torch.no_grad():
        out = model(formula_input())[0].double()
    ref = torch.tensor(reference["resnet18"]["formula_output"], dtype=torch.float64)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    # the check can fail: the same weights in another class order give other logits
    perturbed = formula_weights_(create_model("resnet18")).eval()
    perturbed.fc.weight.data = perturbed.fc.weight.data.flip(0)
    with torch.no_grad():
        assert not torch.allclose(perturbed(formula_input())[0].double(), ref, atol=1e-4 * ref.abs().max().item())


def test_num_classes_zero_returns_pooled_features():
    model = create_model("resnet50", num_classes=0).eval()
    assert isinstance(model.get_classifier(), nn.Identity)
    assert not any(k.startswith("fc.") for k in model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (2, 2048)
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_forward_split_and_classifier():
    model = create_model("resnet18", num_classes=7).eval()
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 3, 4)
        torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.get_classifier() is model.fc and model.fc.out_features == 7


@pytest.mark.parametrize("name,chans", [("resnet18", [64, 64, 128, 256, 512]), ("resnet50", [64, 256, 512, 1024, 2048])])
def test_feature_info_matches_real_maps(name, chans):
    model = create_model(name).eval()
    assert [f.channels for f in model.feature_info] == chans
    assert [f.stride for f in model.feature_info] == [2, 4, 8, 16, 32]
    maps = {}
    hooks = [model.get_submodule(f.module).register_forward_hook(lambda m, i, o, n=f.module: maps.setdefault(n, o)) for f in model.feature_info]
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    for h in hooks:
        h.remove()
    for f in model.feature_info:
        assert isinstance(f, FeatureInfo)
        assert maps[f.module].shape[1] == f.channels
        assert maps[f.module].shape[-1] == 128 // f.stride


def test_in_chans_and_dilation():
    model = create_model("resnet50", in_chans=1, replace_stride_with_dilation=[False, True, True]).eval()
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert [f.stride for f in model.feature_info] == [2, 4, 8, 8, 8]
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 1, 64, 64)).shape == (1, 2048, 8, 8)


def test_zero_init_residual_and_wide_grouped():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in model.layer1)
    resnext = create_model("resnet50", groups=32, width_per_group=4)
    assert resnext.layer1[0].conv2.groups == 32 and resnext.layer1[0].conv2.weight.shape == (128, 4, 3, 3)
    assert sum(p.numel() for p in resnext.parameters()) == 25028904  # torchvision resnext50_32x4d


def test_frozen_bn_norm_layer_by_name_and_class():
    by_name = create_model("resnet18", norm_layer="frozen_bn")
    by_cls = create_model("resnet18", norm_layer=FrozenBatchNorm2d)
    assert isinstance(by_name.bn1, FrozenBatchNorm2d) and isinstance(by_cls.layer4[1].bn2, FrozenBatchNorm2d)
    assert "bn1.num_batches_tracked" not in by_name.state_dict()
    # a regular BatchNorm checkpoint loads into the frozen model (num_batches_tracked dropped)
    bn_model = formula_weights_(create_model("resnet18")).eval()
    by_name.load_state_dict(bn_model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = bn_model(x)
        torch.testing.assert_close(by_name.eval()(x), expected, rtol=0, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"groups": 2}, "groups=2"),
        ({"replace_stride_with_dilation": [True]}, "3 booleans"),
        ({"num_classes": -1}, "num_classes=-1"),
        ({"norm_layer": "batchnrom"}, "'batchnorm'"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, needle):
    with pytest.raises(ModelConfigError, match=needle.replace("(", r"\(")):
        create_model("resnet18", **kwargs)
