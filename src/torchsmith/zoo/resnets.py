"""ResNet (He et al., 2016), module for module torchvision's.

``state_dict()`` keys, order and shapes equal torchvision's ``resnet18`` ...
``resnet152``, so its checkpoints load with no renaming. On top: ``in_chans``,
``num_classes=0`` for pooled features, ``forward_features`` / ``forward_head``,
``feature_info`` and ``get_classifier()``.

Example::

    >>> from torchsmith import create_model
    >>> m = create_model("resnet50").eval()
    >>> x = torch.randn(2, 3, 224, 224)                 # (B, 3, H, W)
    >>> m.forward_features(x).shape                     # (B, 2048, H/32, W/32)
    torch.Size([2, 2048, 7, 7])
    >>> m(x).shape                                      # (B, num_classes)
    torch.Size([2, 1000])
    >>> [(f.module, f.channels, f.stride) for f in m.feature_info]
    [('relu', 64, 2), ('layer1', 256, 4), ('layer2', 512, 8), ('layer3', 1024, 16), ('layer4', 2048, 32)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..codec import get_norm_layer
from ..errors import ModelConfigError
from ..layers import BasicBlock, Bottleneck, FeatureInfo, FeatureInfoList, conv1x1
from ..registry import register_model
from ._factory import keywords_of, set_classifier

__all__ = ["ResNet", "RESNET_DEPTHS", "build_resnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """A ResNet of ``block`` with ``layers[i]`` blocks in stage ``i``.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, four numbers (``[3, 4, 6, 3]`` for ResNet-50).
        num_classes: classifier outputs; ``0`` makes ``fc`` an identity and the
            model returns pooled features ``(B, num_features)``.
        in_chans: input channels.
        zero_init_residual: zero the last norm of each block (each block starts as identity).
        groups, width_per_group: ResNeXt / Wide ResNet widths.
        replace_stride_with_dilation: three booleans, for stages 2-4.
        norm_layer: a norm class or name (``"batchnorm"``, ``"frozen_bn"``).
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: Sequence[bool] | None = None,
        norm_layer: str | Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ModelConfigError(f"ResNet needs four positive block counts, got layers={list(layers)}.")
        if num_classes < 0 or in_chans < 1:
            raise ModelConfigError(
                f"ResNet needs num_classes >= 0 and in_chans >= 1, got num_classes={num_classes}, in_chans={in_chans}."
            )
        dilate = list(replace_stride_with_dilation or (False, False, False))
        if len(dilate) != 3:
            raise ModelConfigError(
                f"replace_stride_with_dilation must hold 3 booleans (stages 2-4), got {replace_stride_with_dilation!r}."
            )
        norm = get_norm_layer(norm_layer)
        self._norm_layer = norm
        self.inplanes = 64
        self.dilation = 1
        self.groups = groups
        self.base_width = width_per_group
        self.num_classes = num_classes
        self.in_chans = in_chans

        # stem: (B, in_chans, H, W) -> (B, 64, H/4, W/4)
        self.conv1 = nn.Conv2d(in_chans, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = FeatureInfoList([FeatureInfo(64, 2, "relu")])

        stride = 4
        for i, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            first_stride, dilated = (1, False) if i == 0 else (2, dilate[i - 1])
            stage = self._make_layer(block, planes, n_blocks, stride=first_stride, dilate=dilated)
            setattr(self, f"layer{i + 1}", stage)
            if first_stride == 2 and not dilated:
                stride *= 2
            self.feature_info.append(FeatureInfo(planes * block.expansion, stride, f"layer{i + 1}"))

        self.num_features = 512 * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        norm = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride), norm(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation, norm)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, groups=self.groups, base_width=self.base_width, dilation=self.dilation, norm_layer=norm)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        """The final classifier (``fc``; an ``nn.Identity`` when ``num_classes=0``)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """timm's: a fresh ``fc`` with ``num_classes`` outputs (0: pooled features); recorded like ``replace_head``.

        >>> m = create_model("resnet18")
        >>> m.reset_classifier(5)
        >>> m.get_classifier(), model_config(m)["steps"]
        (Linear(in_features=512, out_features=5, bias=True), [{'op': 'replace_head', 'num_classes': 5, 'path': 'fc'}])
        """
        if num_classes < 0:
            raise ModelConfigError(f"num_classes must be >= 0, got {num_classes}.")
        set_classifier(self, "fc", nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity(), num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> last stage map (B, num_features, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, C, h, w) -> (B, num_classes), or pooled (B, C) with ``pre_logits=True``."""
        x = torch.flatten(self.avgpool(x), 1)  # (B, C)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# depth -> (block, blocks per stage): the one table of ResNet architectures
RESNET_DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def build_resnet(backbone_name: str, **kwargs: Any) -> ResNet:
    """The ResNet ``backbone_name`` (``"resnet18"`` ... ``"resnet152"``) built with ``kwargs`` (not recorded:
    for composite models such as FPN and U-Net encoders)."""
    depth = backbone_name.removeprefix("resnet")
    if not depth.isdigit() or int(depth) not in RESNET_DEPTHS:
        names = [f"resnet{d}" for d in RESNET_DEPTHS]
        raise ModelConfigError(f"backbone_name={backbone_name!r} is not a ResNet; use one of {names}.")
    block, layers = RESNET_DEPTHS[int(depth)]
    return ResNet(block, layers, **kwargs)


# registered entry points


@register_model
@keywords_of(ResNet, fixed=("block", "layers"))
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (11.7M parameters with 1000 classes); keyword arguments as :class:`ResNet`.

    >>> create_model("resnet18", num_classes=10)(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 10])
    """
    return build_resnet("resnet18", **kwargs)


@register_model
@keywords_of(ResNet, fixed=("block", "layers"))
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34 (21.8M parameters with 1000 classes); keyword arguments as :class:`ResNet`."""
    return build_resnet("resnet34", **kwargs)


@register_model
@keywords_of(ResNet, fixed=("block", "layers"))
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50 (25.6M parameters with 1000 classes); keyword arguments as :class:`ResNet`.

    >>> create_model("resnet50", num_classes=10)(torch.randn(1, 3, 224, 224)).shape
    torch.Size([1, 10])
    """
    return build_resnet("resnet50", **kwargs)


@register_model
@keywords_of(ResNet, fixed=("block", "layers"))
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101 (44.5M parameters with 1000 classes); keyword arguments as :class:`ResNet`."""
    return build_resnet("resnet101", **kwargs)


@register_model
@keywords_of(ResNet, fixed=("block", "layers"))
def resnet152(**kwargs: Any) -> ResNet:
    """ResNet-152 (60.2M parameters with 1000 classes); keyword arguments as :class:`ResNet`."""
    return build_resnet("resnet152", **kwargs)
