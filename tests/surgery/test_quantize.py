"""optimize_for_inference(dtype="int8"): PyTorch 2 export quantization (torchao), checked against the float model.

The reference is the float model itself: a small classifier trained here on scikit-learn's digits (real
handwritten images shipped with the package), whose test-set predictions the int8 model must reproduce.
Tests that quantize need torchao (the ``int8`` extra); the refusals before any quantizing run without it.
"""

from __future__ import annotations

import builtins
import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import snapshot
from torch import nn

import torchsmith as ts
from torchsmith.errors import SurgeryError, UnsaveableModelError


def small_cnn() -> nn.Module:
    """conv-BN-ReLU twice, a residual add, pooling, a linear head: the patterns int8 lowers."""

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
            self.relu = nn.ReLU()
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

        def forward(self, x):  # (B, 1, 8, 8) -> (B, 10)
            x = self.stem(x)
            out = self.conv(x)
            out += x  # in place, as a ResNet block
            return self.head(self.relu(out))

    return SmallCNN()


@pytest.fixture(scope="module")
def digits():
    """A small conv classifier trained on the digits (8x8, 1 channel), and the train / test images."""
    pytest.importorskip("torchao")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for _ in range(15):
        for i in range(0, 1400, 50):
            loss = F.cross_entropy(model(x[i : i + 50]), y[i : i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), x[:1400], x[1400:], y[1400:]


def test_int8_agrees_with_the_float_model_on_held_out_images_and_leaves_it_unchanged(digits):
    model, train_x, test_x, test_y = digits
    before = snapshot(model)
    fast = ts.optimize_for_inference(model, dtype="int8", calibration=[train_x[i : i + 100] for i in range(0, 400, 100)])
    assert snapshot(model) == before and not model.training
    with torch.inference_mode():
        ref, got = model(test_x), fast(test_x)  # another batch size than calibrated: the batch is dynamic
    assert got.shape == ref.shape == (len(test_x), 10)
    # checked on the calibration data at 99%; on held-out images this 32-channel toy model keeps 98%
    assert (ref.argmax(1) == got.argmax(1)).float().mean() >= 0.98
    assert (got - ref).abs().mean() < 0.05 * ref.abs().mean()  # close logits, not only the same winners
    assert (ref.argmax(1) == test_y).float().mean() > 0.8  # the reference really classifies
    # the int8 graph really holds int8 weights (not a float model under another name)
    assert any(t.dtype == torch.int8 for t in fast.graph_module.state_dict().values())


def test_int8_below_the_agreement_it_promises_is_refused(digits):
    from torchsmith.surgery.quantize import quantize_int8

    model, train_x, *_ = digits
    before = snapshot(model)
    with pytest.raises(SurgeryError, match="agree with the float model's on .* below the 101% allowed; nothing was changed"):
        quantize_int8(model, [train_x[:64]], min_agreement=1.01)
    assert snapshot(model) == before


def test_save_model_refuses_an_int8_model_and_writes_nothing(digits, tmp_path):
    model, train_x, *_ = digits
    fast = ts.optimize_for_inference(model, dtype="int8", calibration=[train_x[:200]])
    with pytest.raises(UnsaveableModelError, match=r"int8 model from optimize_for_inference.*Save the float model"):
        ts.save_model(fast, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_int8_without_calibration_or_with_another_dtype_is_refused_before_anything():
    model = ts.create_model("mlp", in_features=4, hidden=(8,), num_classes=2)
    before = snapshot(model)
    with pytest.raises(SurgeryError, match="calibration="):
        ts.optimize_for_inference(model, dtype="int8")
    with pytest.raises(SurgeryError, match="dtype takes 'int8'"):
        ts.optimize_for_inference(model, dtype="int4", calibration=[torch.randn(2, 4)])
    assert snapshot(model) == before and model.training


def test_int8_without_torchao_names_the_extra(monkeypatch):
    real = builtins.__import__

    def no_torchao(name, *args, **kwargs):
        if name.startswith("torchao"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchao)
    model = ts.create_model("mlp", in_features=4, hidden=(8,), num_classes=2)
    with pytest.raises(SurgeryError, match=r"pip install 'torchsmith\[int8\]'"):
        ts.optimize_for_inference(copy.deepcopy(model), dtype="int8", calibration=[torch.randn(2, 4)])
