from __future__ import annotations

import json

import pytest
from helpers import DATA

pytest_plugins = ["hub_fixtures"]  # torch_home, weights_table, hf_cache: hubs the tests build themselves


@pytest.fixture
def registered():
    """``registered(builder, name)`` registers a model builder for one test; unregistered afterwards."""
    import torchsmith as ts
    from torchsmith.registry import _REGISTRY

    names = []

    def add(fn, name):
        names.append(name)
        return ts.register_model(fn, name=name)

    yield add
    for name in names:
        _REGISTRY.pop(name, None)


@pytest.fixture(scope="session")
def reference() -> dict:
    """Facts read off torchvision's models (copied from shared/fixtures)."""
    return json.loads((DATA / "torchvision_reference.json").read_text())["models"]


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
