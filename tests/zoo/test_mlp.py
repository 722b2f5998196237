from __future__ import annotations

import pytest
import torch
from torch import nn

from torchsmith import MLP, ModelConfigError, create_model


def test_default_mlp_is_the_tutorials():
    model = create_model("mlp")
    assert isinstance(model, MLP)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 10)]
    assert sum(p.numel() for p in model.parameters()) == 784 * 256 + 256 + 256 * 10 + 10
    x = torch.randn(3, 784)
    expected = model.head(torch.relu(linears[0](x)))
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x.reshape(3, 1, 28, 28)), expected)  # images flattened
    assert model.get_classifier() is model.head and model.feature_info[0].channels == 256


def test_configured_mlp():
    model = create_model("mlp", in_features=8, hidden=(16, 4), num_classes=2, act_layer="gelu", dropout=0.5)
    assert [type(m).__name__ for m in model.features] == ["Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout"]
    assert model.eval()(torch.randn(5, 8)).shape == (5, 2)
    assert model.forward_head(model.forward_features(torch.randn(2, 8)), pre_logits=True).shape == (2, 4)


def test_bad_mlp_arguments():
    with pytest.raises(ModelConfigError, match="hidden=\\[0\\]"):
        create_model("mlp", hidden=(0,))
    with pytest.raises(ModelConfigError, match="act_layer"):
        create_model("mlp", act_layer="relu6x")
