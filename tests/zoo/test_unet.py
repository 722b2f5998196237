from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import formula_weights_
from reference_models import TutorialUNet, copy_by_order, tv_resnet
from torchsmith import EncoderUNet, ModelConfigError, UNet, create_model


def test_default_unet_is_the_tutorials_network():
    model = create_model("unet").eval()
    assert isinstance(model, UNet)
    assert sum(p.numel() for p in model.parameters()) == 32_090_627
    block = model.stem
    assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.Dropout, nn.LeakyReLU] * 2
    assert (block[2].p, block[6].p) == (0.3, 0.4)
    assert model.downs[0][0].stride == (2, 2) and model.downs[0][0].out_channels == 64
    assert model.ups[0].conv.kernel_size == (1, 1) and (model.ups[0].conv.in_channels, model.ups[0].conv.out_channels) == (1024, 512)
    # same numbers as the tutorial's own code, weight for weight
    ref = TutorialUNet().eval()
    formula_weights_(model)
    copy_by_order(model, ref.ordered_modules())
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(y, ref(x), rtol=1e-4, atol=1e-5)
    assert y.shape == (2, 3, 256, 256)
    assert 0.0 <= y.min().item() and y.max().item() <= 1.0  # sigmoid


def test_tutorial_crashes_where_we_do_not():
    x = torch.rand(1, 3, 100, 100)  # not a multiple of 16
    with pytest.raises(RuntimeError), torch.no_grad():
        TutorialUNet().eval()(x)
    with torch.no_grad():
        assert create_model("unet").eval()(x).shape == (1, 3, 100, 100)


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 300), w=st.integers(1, 300), depth=st.integers(1, 5))
def test_any_size_in_is_the_same_size_out(h, w, depth):
    # the shape rule depends on depth, not widths: small widths keep this fast
    model = UNet(widths=[2 * 2**i for i in range(depth + 1)], in_chans=1, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, h, w)).shape == (1, 2, h, w)


def test_padding_leaves_divisible_inputs_alone_and_crops_others():
    from torchsmith.zoo.unets import _pad_to_multiple

    x = torch.rand(1, 3, 20, 12)
    assert _pad_to_multiple(x, 4)[0] is x  # divisible: untouched, no copy
    padded, h, w = _pad_to_multiple(x[..., :19, :11], 4)
    assert (padded.shape[-2:], h, w) == ((20, 12), 19, 11) and padded[..., 19:, :].abs().sum() == 0
    model = UNet(widths=(4, 8, 16), final_activation="none").eval()
    with torch.no_grad():
        y_odd = model(x[..., :19, :11])
        y_pad = model(torch.nn.functional.pad(x[..., :19, :11], (0, 1, 0, 1)))
    torch.testing.assert_close(y_odd, y_pad[..., :19, :11])


def test_configurable_unet():
    model = create_model(
        "unet", in_chans=1, num_classes=4, widths=(8, 16, 32), dropout=(0.0, 0.1),
        norm_layer="instancenorm", act_layer="gelu", final_activation="softmax",
    ).eval()
    assert model.depth == 2 and isinstance(model.stem[1], nn.InstanceNorm2d) and isinstance(model.stem[3], nn.GELU)
    with torch.no_grad():
        y = model(torch.rand(3, 1, 33, 17))
    assert y.shape == (3, 4, 33, 17)
    torch.testing.assert_close(y.sum(1), torch.ones(3, 33, 17))  # softmax over channels
    assert [(f.channels, f.stride) for f in model.feature_info] == [(8, 1), (16, 2), (32, 4)]
    assert model.torchsmith_config["kwargs"]["widths"] == (8, 16, 32)


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"widths": (64,)}, "two positive widths"), ({"dropout": (0.3,)}, "two rates"), ({"final_activation": "tanh"}, "sigmoid")],
)
def test_bad_unet_arguments(kwargs, needle):
    with pytest.raises(ModelConfigError, match=needle):
        create_model("unet", **kwargs)


@pytest.mark.parametrize("name,channels", [("unet_resnet34", [64, 64, 128, 256, 512]), ("unet_resnet50", [64, 256, 512, 1024, 2048])])
def test_unet_on_resnet_encoder(name, channels):
    model = create_model(name, num_classes=3).eval()
    assert isinstance(model, EncoderUNet)
    assert [f.channels for f in model.feature_info] == channels
    assert [f.stride for f in model.feature_info] == [2, 4, 8, 16, 32]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 70, 45)).shape == (1, 3, 70, 45)
    # the encoder keeps torchvision's keys: its weights load with no renaming
    tv_state = tv_resnet(name.removeprefix("unet_")).state_dict()
    result = model.encoder.load_state_dict(tv_state, strict=False)
    assert result.missing_keys == [] and set(result.unexpected_keys) == {"fc.weight", "fc.bias"}


def test_encoder_unet_rejects_encoder_without_feature_info():
    with pytest.raises(ModelConfigError, match="feature_info"):
        EncoderUNet(nn.Sequential(nn.Conv2d(3, 3, 1)))
