"""adapt_input_channels on convs whose forward changes the weight (weight standardisation, timm's StdConv2d and
ScaledStdConv2d) or only the padding (timm's Conv2dSame): the first cannot keep its outputs and is refused, the
model as it was; the second adapts exactly. The reference: the original model on the input repeated to its
channels, and a formula for what weight standardisation computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchsmith as ts
from helpers import snapshot


class StdConv2d(nn.Conv2d):
    """Weight standardisation as timm writes it: each output filter to zero mean and unit variance."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2dSame(nn.Conv2d):
    """TensorFlow's 'same' padding computed in the forward (timm's Conv2dSame): still linear in the weight."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        pad = [max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
               for i, s, k, d in zip((ih, iw), self.stride, self.kernel_size, self.dilation)]
        x = F.pad(x, [pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def net(conv: type[nn.Conv2d]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(conv(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()


def test_a_weight_standardised_conv_is_refused_and_the_model_kept():
    model = net(StdConv2d)
    gray = torch.randn(2, 1, 16, 16)
    want = model(gray.expand(-1, 3, -1, -1))
    # what summing would give: the standardised sum of the weights is not the sum of the standardised weights
    summed = StdConv2d(1, 8, 3, stride=2)
    summed.weight.data = model[0].weight.sum(1, keepdim=True)
    summed.bias.data = model[0].bias.clone()
    assert (nn.Sequential(summed, *model[1:])(gray) - want).abs().max() > 1e-3  # the silent wrong answer
    before = snapshot(model)
    with pytest.raises(ts.SurgeryError, match=r"'0' \(StdConv2d\).*not linear in its weight.*model is as it was"):
        ts.adapt_input_channels(model, 1, input_size=(1, 3, 16, 16))
    assert snapshot(model) == before and model[0].in_channels == 3
    torch.testing.assert_close(model(gray.expand(-1, 3, -1, -1)), want)


@pytest.mark.parametrize("in_chans", [1, 2, 5])
def test_a_conv_that_only_pads_in_its_forward_adapts_exactly(in_chans):
    model = net(Conv2dSame)
    x = torch.randn(2, in_chans, 15, 15)
    repeated = x[:, torch.arange(3) % in_chans] if in_chans <= 3 else None
    original = net(Conv2dSame)
    ts.adapt_input_channels(model, in_chans, input_size=(1, 3, 15, 15))
    assert model[0].in_channels == in_chans
    if repeated is not None:
        torch.testing.assert_close(model(x), original(repeated), rtol=1e-5, atol=1e-6)
    else:  # more channels than before: new channel j carries old channel j % 3, its weight shared out
        y = torch.randn(2, 3, 15, 15)
        torch.testing.assert_close(model(y[:, torch.arange(in_chans) % 3]), original(y), rtol=1e-5, atol=1e-6)
