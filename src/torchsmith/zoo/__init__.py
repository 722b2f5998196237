"""The model zoo: one file per architecture family, registered on import.

Builders live here and are reached by name through ``torchsmith.create_model``.
"""

from . import resnet
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
