"""Peer-model tests: run in .venv-interop (`make test-interop`), random weights only, CPU."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # `from models import ...`
