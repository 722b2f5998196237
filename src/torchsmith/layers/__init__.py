"""Reusable building blocks. Never imports the zoo. (Layer names: ``torchsmith.codec``.)"""

from .children import ChildrenRunner
from .blocks import BasicBlock, Bottleneck, conv1x1, conv3x3
from .fpn import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7
from .info import FeatureInfo, FeatureInfoList
from .norm import FrozenBatchNorm2d

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "conv1x1",
    "conv3x3",
    "ExtraFPNBlock",
    "FeaturePyramidNetwork",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "ChildrenRunner",
    "FeatureInfo",
    "FeatureInfoList",
    "FrozenBatchNorm2d",
]
