"""Issue 19, section 1: save_model / load_model of models the meta rebuild did not handle. Parametrized layers
(torch makes a class per instance) compare by their original class and parametrizations; a constructor that
computes on tensors (torchvision's RegNet calls ``.tolist()``) is built for real where meta fails."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import torchsmith as ts



class WeightNormed(nn.Module):
    def __init__(self, *, width: int = 4) -> None:
        super().__init__()
        self.conv = parametrizations.weight_norm(nn.Conv2d(3, width, 3))
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class Computes(nn.Module):
    """Reads tensor values in its constructor, as torchvision's RegNet (``.tolist()``)."""

    def __init__(self, *, depth: float = 2.6) -> None:
        super().__init__()
        widths = (torch.arange(3) * depth).round().int().tolist()  # fails on the meta device
        self.convs = nn.Sequential(*[nn.Conv2d(3 if i == 0 else 4, 4, 3, padding=1) for i, _ in enumerate(widths)])
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.convs(x).mean((2, 3)))


def test_save_model_of_an_unchanged_weight_normed_model(registered, tmp_path):
    """Was: "expected ParametrizedConv2d, found ParametrizedConv2d"."""
    registered(WeightNormed, "test_right_weight_normed")
    model = ts.create_model("test_right_weight_normed").eval()
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m").eval()
    assert type(loaded.conv).__name__ == "ParametrizedConv2d"
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_save_model_after_surgery_on_weight_normed_convs(registered, tmp_path):
    registered(WeightNormed, "test_right_weight_normed")
    model = ts.adapt_input_channels(ts.create_model("test_right_weight_normed"), 1)
    model = ts.fold_batchnorm(model.eval())
    assert type(model.conv) is nn.Conv2d and isinstance(model.bn, nn.Identity)
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    x = torch.randn(2, 1, 8, 8)
    assert type(loaded.conv) is nn.Conv2d and torch.equal(loaded(x), model(x))


def test_a_parametrization_added_by_hand_is_still_a_difference(registered, tmp_path):
    registered(WeightNormed, "test_right_weight_normed")
    model = ts.create_model("test_right_weight_normed")
    parametrizations.spectral_norm(model.fc)
    with pytest.raises(ts.UnsaveableModelError, match=r"fc: expected Linear, found Linear \(parametrized weight: _SpectralNorm\)"):
        ts.save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_a_constructor_that_reads_tensor_values_saves_and_loads(registered, tmp_path):
    """Was: NotImplementedError: Cannot copy out of meta tensor (a raw error from the meta rebuild)."""
    registered(Computes, "test_right_computes")
    model = ts.replace_head(ts.create_model("test_right_computes", depth=1.5), 3, path="fc")
    ts.save_model(model, tmp_path / "m")
    loaded = ts.load_model(tmp_path / "m")
    x = torch.randn(2, 3, 8, 8)
    assert loaded.fc.out_features == 3 and not loaded.fc.weight.is_meta
    assert torch.equal(loaded(x), model(x))
