"""torch.compile and torch.export of the zoo's main models, on small inputs."""

from __future__ import annotations

import pytest
import torch

from torchsmith import create_model

CASES = {
    "resnet50": dict(kwargs={}, shape=(2, 3, 64, 64)),
    "resnet50_fpn": dict(kwargs={}, shape=(1, 3, 64, 96)),
    "unet": dict(kwargs={}, shape=(1, 3, 40, 56)),
}


def _close(a, b):
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _close(a[k], b[k])
        return
    scale = max(b.abs().max().item(), 1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * scale)


def _model_and_input(name):
    torch.manual_seed(0)
    case = CASES[name]
    model = create_model(name, **case["kwargs"]).eval()
    return model, torch.rand(*case["shape"])


@pytest.mark.parametrize("name", list(CASES))
def test_export_matches_eager(name):
    model, x = _model_and_input(name)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,))
        _close(exported.module()(x), expected)


@pytest.mark.parametrize("name", list(CASES))
def test_compile_matches_eager(name):
    torch._dynamo.reset()
    model, x = _model_and_input(name)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)
        _close(compiled(x), expected)
