"""The interop environment holds the peer libraries at the versions the suite is written for."""

import timm
import torch
import torchvision
import transformers

import torchsmith


def test_versions():
    assert torch.__version__.startswith("2.14.1")
    assert torchvision.__version__.startswith("0.29.1")
    assert transformers.__version__ == "4.57.6"
    assert timm.__version__


def test_torchsmith_from_this_checkout():
    from pathlib import Path

    assert Path(torchsmith.__file__).resolve().parents[1] == (Path(__file__).resolve().parents[2] / "src")
