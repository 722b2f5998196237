from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def reference() -> dict:
    """Facts read off torchvision's models (copied from shared/fixtures)."""
    return json.loads((DATA / "torchvision_reference.json").read_text())["models"]


def formula_weights_(model: torch.nn.Module) -> torch.nn.Module:
    """Fill a model with the fixture's implementation-independent formula weights."""
    sd = model.state_dict()
    new = {}
    for i, key in enumerate(sorted(sd)):
        t = sd[key]
        if not t.is_floating_point():
            new[key] = t
            continue
        base = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7 + i)
        if key.endswith("running_var"):
            v = 1 + 0.5 * base**2
        elif t.dim() > 1:
            v = base * math.sqrt(2 / math.prod(t.shape[1:]))
        elif key.endswith("weight"):
            v = 1 + 0.1 * base
        else:
            v = 0.1 * base
        new[key] = v.reshape(t.shape).to(t.dtype)
    model.load_state_dict(new)
    return model


def randomise_bn_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding and freezing are really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


def formula_input() -> torch.Tensor:
    n = 3 * 224 * 224
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.01).reshape(1, 3, 224, 224).float()


def state_dict_signature(model: torch.nn.Module) -> list[list]:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


def pytest_terminal_summary(terminalreporter):
    """Print the figures the reliability suite recorded (copied into docs/reliability.md)."""
    import sys

    tools = sys.modules.get("reliability_tools")
    if tools is None or not tools.FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, figures in tools.FIGURES.items():
        terminalreporter.write_line(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# tests/interop needs torchvision, timm and transformers, which live in .venv-interop (make test-interop)
try:
    import torchvision  # noqa: F401
except ImportError:
    collect_ignore = ["interop"]
