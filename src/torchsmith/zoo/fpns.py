"""ResNet + FPN detection backbones, module for module torchvision's.

``resnet_fpn_backbone`` equals torchvision's ``resnet_fpn_backbone``: same
state-dict keys (``body.*``, ``fpn.*``), same trainable parameters for each
``trainable_layers``, same output levels and shapes. Registered as
``resnet18_fpn`` ... ``resnet152_fpn`` (the tutorial's).

Example::

    >>> from torchsmith import create_model
    >>> with torch.device("meta"):                      # shapes only: no memory, no compute
    ...     m = create_model("resnet152_fpn").eval()
    ...     out = m(torch.randn(1, 3, 224, 224))
    >>> {k: tuple(v.shape) for k, v in out.items()}
    {'0': (1, 256, 56, 56), '1': (1, 256, 28, 28), '2': (1, 256, 14, 14), '3': (1, 256, 7, 7), 'pool': (1, 256, 4, 4)}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import ModelConfigError
from ..layers import ChildrenRunner, ExtraFPNBlock, FeatureInfo, FeatureInfoList, FeaturePyramidNetwork, FrozenBatchNorm2d, LastLevelMaxPool, LastLevelP6P7
from ..pretrained import load_pretrained
from ..registry import register_model
from ._factory import keywords_of, with_backbone_cfg
from .resnets import build_resnet

__all__ = [
    "LayerGetter",
    "BackboneWithFPN",
    "resnet_fpn_backbone",
    "resnet18_fpn",
    "resnet34_fpn",
    "resnet50_fpn",
    "resnet101_fpn",
    "resnet152_fpn",
]


class LayerGetter(ChildrenRunner):
    """Runs a model's top-level children in order and returns chosen outputs.

    Children after the last requested one are dropped (no wasted compute, no
    unused keys). ``return_layers`` maps child names to output names. The
    runner is :class:`torchsmith.layers.ChildrenRunner` (the one
    ``extract_features`` uses); this class only picks the children.

    Example::

        >>> body = LayerGetter(create_model("resnet18"), {"layer1": "0", "layer4": "1"})
        >>> {k: tuple(v.shape) for k, v in body(torch.randn(1, 3, 64, 64)).items()}
        {'0': (1, 64, 16, 16), '1': (1, 512, 2, 2)}
    """

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        children = dict(model.named_children())
        missing = [name for name in return_layers if name not in children]
        if missing:
            raise ModelConfigError(
                f"return_layers {missing} are not top-level children of {type(model).__name__}; "
                f"its children are {list(children)}."
            )
        names = list(children)
        last = max((names.index(name) for name in return_layers), default=-1)
        super().__init__({name: children[name] for name in names[: last + 1]}, return_layers)


class BackboneWithFPN(nn.Module):
    """A backbone's chosen stages fed to a :class:`FeaturePyramidNetwork`.

    ``forward`` returns an ordered dict ``{level name: (B, out_channels, H/s, W/s)}``.
    ``feature_info`` lists each output level (``module`` holds the level's key).
    """

    def __init__(
        self,
        backbone: nn.Module,
        return_layers: dict[str, str],
        in_channels_list: list[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if extra_blocks is None:
            extra_blocks = LastLevelMaxPool()
        self.body = LayerGetter(backbone, return_layers=return_layers)
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=extra_blocks, norm_layer=norm_layer)
        self.out_channels = out_channels
        strides = {f.module: f.stride for f in getattr(backbone, "feature_info", [])}
        self.feature_info = FeatureInfoList(FeatureInfo(out_channels, strides.get(layer, 0), key) for layer, key in return_layers.items())
        if isinstance(extra_blocks, LastLevelMaxPool):
            self.feature_info.append(FeatureInfo(out_channels, self.feature_info[-1].stride * 2, "pool"))
        elif isinstance(extra_blocks, LastLevelP6P7):
            last = self.feature_info[-1].stride
            self.feature_info += [FeatureInfo(out_channels, last * 2, "p6"), FeatureInfo(out_channels, last * 4, "p7")]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))  # {level: (B, out_channels, h, w)}


def _extra_block(value: str | ExtraFPNBlock | None, in_channels: int, out_channels: int) -> ExtraFPNBlock | None:
    if value is None or isinstance(value, ExtraFPNBlock):
        return value
    table = {"pool": LastLevelMaxPool, "p6p7": lambda: LastLevelP6P7(in_channels, out_channels)}
    if value in table:
        return table[value]()
    raise ModelConfigError(
        f"extra_blocks={value!r} is not known; use 'pool' (LastLevelMaxPool), 'p6p7' (LastLevelP6P7), "
        "None (pool) or an ExtraFPNBlock instance."
    )


def resnet_fpn_backbone(
    *,
    backbone_name: str = "resnet50",
    trainable_layers: int = 3,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_blocks: str | ExtraFPNBlock | None = None,
    norm_layer: str | Callable[[int], nn.Module] | None = FrozenBatchNorm2d,
    out_channels: int = 256,
    backbone_weights: str | bool | None = None,
) -> BackboneWithFPN:
    """A ResNet + FPN backbone equal to torchvision's ``resnet_fpn_backbone``.

    Args:
        backbone_name: ``resnet18`` ... ``resnet152``.
        trainable_layers: how many stages, counted from the last, keep
            ``requires_grad`` (0-5; 5 includes the stem).
        returned_layers: ResNet stages (1-4) fed to the FPN.
        extra_blocks: ``None`` / ``"pool"`` (max-pool level), ``"p6p7"`` or a block.
        norm_layer: the backbone's norm (frozen BatchNorm by default).
        out_channels: channels of every pyramid level.
        backbone_weights: pretrained weights of ``backbone_name`` for the ResNet (a tag such as
            ``"IMAGENET1K_V2"``, or True for its default; ``torchsmith.list_pretrained``), as torchvision's
            ``weights_backbone``. The FPN layers keep their initial values.

    Example::

        >>> m = resnet_fpn_backbone(backbone_name="resnet50", trainable_layers=3)
        >>> {k: tuple(v.shape) for k, v in m(torch.randn(1, 3, 200, 300)).items()}["pool"]
        (1, 256, 4, 5)
    """
    if not 0 <= trainable_layers <= 5:
        raise ModelConfigError(f"trainable_layers must be in 0..5, got {trainable_layers}.")
    returned_layers = list(returned_layers)
    if not returned_layers or any(k not in (1, 2, 3, 4) for k in returned_layers) or returned_layers != sorted(set(returned_layers)):
        raise ModelConfigError(f"returned_layers must be increasing stage numbers from 1..4, got {returned_layers}.")
    backbone = build_resnet(backbone_name, norm_layer=norm_layer)
    if backbone_weights is not None and backbone_weights is not False:
        load_pretrained(backbone, backbone_name, backbone_weights, backbone=True)

    # freeze everything but the last `trainable_layers` stages (torchvision's rule)
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in backbone.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)

    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    channels = {f.module: f.channels for f in backbone.feature_info}  # what each stage gives, as the ResNet says
    in_channels_list = [channels[f"layer{k}"] for k in returned_layers]
    extra = _extra_block(extra_blocks, in_channels_list[-1], out_channels)
    return with_backbone_cfg(BackboneWithFPN(backbone, return_layers, in_channels_list, out_channels, extra_blocks=extra), backbone)


@register_model
@keywords_of(resnet_fpn_backbone, fixed=("backbone_name",))
def resnet18_fpn(**kwargs: Any) -> BackboneWithFPN:
    """resnet18 + FPN detection backbone; keyword arguments as :func:`resnet_fpn_backbone`."""
    return resnet_fpn_backbone(backbone_name="resnet18", **kwargs)


@register_model
@keywords_of(resnet_fpn_backbone, fixed=("backbone_name",))
def resnet34_fpn(**kwargs: Any) -> BackboneWithFPN:
    """resnet34 + FPN detection backbone; keyword arguments as :func:`resnet_fpn_backbone`."""
    return resnet_fpn_backbone(backbone_name="resnet34", **kwargs)


@register_model
@keywords_of(resnet_fpn_backbone, fixed=("backbone_name",))
def resnet50_fpn(**kwargs: Any) -> BackboneWithFPN:
    """resnet50 + FPN detection backbone; keyword arguments as :func:`resnet_fpn_backbone`."""
    return resnet_fpn_backbone(backbone_name="resnet50", **kwargs)


@register_model
@keywords_of(resnet_fpn_backbone, fixed=("backbone_name",))
def resnet101_fpn(**kwargs: Any) -> BackboneWithFPN:
    """resnet101 + FPN detection backbone; keyword arguments as :func:`resnet_fpn_backbone`."""
    return resnet_fpn_backbone(backbone_name="resnet101", **kwargs)


@register_model
@keywords_of(resnet_fpn_backbone, fixed=("backbone_name",))
def resnet152_fpn(**kwargs: Any) -> BackboneWithFPN:
    """resnet152 + FPN detection backbone (the tutorial's); keyword arguments as :func:`resnet_fpn_backbone`."""
    return resnet_fpn_backbone(backbone_name="resnet152", **kwargs)
