"""The model zoo: one file per architecture family, registered on import.

Builders live here and are reached by name through ``torchsmith.create_model``.
"""

from .fpn import (
    BackboneWithFPN,
    LayerGetter,
    resnet18_fpn,
    resnet34_fpn,
    resnet50_fpn,
    resnet101_fpn,
    resnet152_fpn,
    resnet_fpn_backbone,
)
from .mlp import MLP, mlp
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .unet import EncoderUNet, UNet, unet, unet_on_resnet, unet_resnet18, unet_resnet34, unet_resnet50

__all__ = [
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "BackboneWithFPN",
    "LayerGetter",
    "resnet_fpn_backbone",
    "resnet18_fpn",
    "resnet34_fpn",
    "resnet50_fpn",
    "resnet101_fpn",
    "resnet152_fpn",
    "unet_on_resnet",
    "UNet",
    "EncoderUNet",
    "unet",
    "unet_resnet18",
    "unet_resnet34",
    "unet_resnet50",
    "MLP",
    "mlp",
]
