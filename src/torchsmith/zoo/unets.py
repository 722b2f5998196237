"""U-Net (Ronneberger et al., 2015), configurable; the tutorial's network by default.

``create_model("unet")`` is the tutorial's exact network (32,090,627
parameters): double convs (3x3 conv, BN, Dropout 0.3, LeakyReLU, 3x3 conv, BN,
Dropout 0.4, LeakyReLU), stride-2 3x3 conv downsampling, nearest x2 upsampling
with a 1x1 conv, widths 64-128-256-512-1024, a 3x3 head to 3 channels and a
sigmoid. Unlike the tutorial it takes any height and width: the input is
zero-padded to a multiple of ``2**depth`` and the output cropped back.

``unet_resnet34`` / ``unet_resnet50`` put a U-Net decoder on a zoo ResNet,
wired from the encoder's ``feature_info``; ``model.encoder`` keeps the ResNet's
state-dict keys, so torchvision ResNet weights load into it with no renaming.

Example::

    >>> from torchsmith import create_model
    >>> m = create_model("unet").eval()
    >>> m(torch.rand(2, 3, 256, 256)).shape              # (B, 3, H, W), values in (0, 1)
    torch.Size([2, 3, 256, 256])
    >>> m(torch.rand(1, 3, 101, 67)).shape               # any size
    torch.Size([1, 3, 101, 67])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..codec import get_act_layer, get_norm_layer
from ..errors import ModelConfigError
from ..layers import FeatureInfo, FeatureInfoList
from ..pretrained import load_pretrained
from ..registry import register_model
from ._factory import keywords_of, set_classifier, with_backbone_cfg
from .fpns import LayerGetter
from .resnets import build_resnet

__all__ = [
    "UNet",
    "EncoderUNet",
    "DoubleConv",
    "DownSample",
    "UpSample",
    "unet",
    "unet_on_resnet",
    "unet_resnet18",
    "unet_resnet34",
    "unet_resnet50",
]

Layer = Callable[..., nn.Module]
FINAL_ACTIVATIONS = ("sigmoid", "softmax", "none")


# blocks


class DoubleConv(nn.Sequential):
    """(3x3 conv, norm, dropout, act) x 2: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, *, dropout: Sequence[float], norm_layer: Layer, act_layer: Layer) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            norm_layer(out_ch),
            nn.Dropout(dropout[0]),
            act_layer(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
            norm_layer(out_ch),
            nn.Dropout(dropout[1]),
            act_layer(),
        )


class DownSample(nn.Sequential):
    """Stride-2 3x3 conv keeping the channels, then act: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int, *, act_layer: Layer) -> None:
        super().__init__(nn.Conv2d(channels, channels, 3, stride=2, padding=1), act_layer())


class UpSample(nn.Module):
    """Nearest x2 upsampling, 1x1 conv to ``out_ch``, concatenated with the skip.

    (B, in, h, w), skip (B, s, 2h, 2w) -> (B, out + s, 2h, 2w)
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, out, 2h, 2w)
        return torch.cat([x, skip], dim=1)


# helpers


def _final_activation(name: str | None) -> nn.Module:
    key = "none" if name is None else str(name).lower()
    if key == "sigmoid":
        return nn.Sigmoid()
    if key == "softmax":
        return nn.Softmax(dim=1)
    if key == "none":
        return nn.Identity()
    raise ModelConfigError(f"final_activation={name!r} is not one of {FINAL_ACTIVATIONS} (or None).")


def _pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int, int]:
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros on the right and bottom
    return x, h, w


# models


class UNet(nn.Module):
    """A U-Net whose depth follows ``widths`` (``len(widths) - 1`` downsamplings).

    Args:
        in_chans, num_classes: image and output channels.
        widths: encoder widths, finest first; the decoder mirrors them.
        dropout: the two dropout rates inside each double conv.
        norm_layer, act_layer: classes or names (``"batchnorm"``, ``"leaky_relu"``).
        final_activation: ``"sigmoid"``, ``"softmax"`` (over channels) or ``"none"``.
    """

    def __init__(
        self,
        *,
        in_chans: int = 3,
        num_classes: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        dropout: Sequence[float] = (0.3, 0.4),
        norm_layer: str | Layer | None = None,
        act_layer: str | Layer | None = None,
        final_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__()
        widths = list(widths)
        if len(widths) < 2 or any(w < 1 for w in widths) or in_chans < 1 or num_classes < 1:
            raise ModelConfigError(
                f"UNet needs at least two positive widths and positive channels, got widths={widths}, "
                f"in_chans={in_chans}, num_classes={num_classes}."
            )
        if len(dropout) != 2 or not all(0.0 <= p < 1.0 for p in dropout):
            raise ModelConfigError(f"dropout must be two rates in [0, 1), got {list(dropout)}.")
        norm = get_norm_layer(norm_layer, default=nn.BatchNorm2d)
        act = get_act_layer(act_layer, default=nn.LeakyReLU)
        block = dict(dropout=tuple(dropout), norm_layer=norm, act_layer=act)
        self.depth = len(widths) - 1
        self.num_classes = num_classes
        self.in_chans = in_chans

        self.stem = DoubleConv(in_chans, widths[0], **block)
        self.downs = nn.ModuleList(DownSample(w, act_layer=act) for w in widths[:-1])
        self.encoder = nn.ModuleList(DoubleConv(a, b, **block) for a, b in zip(widths[:-1], widths[1:]))
        self.ups = nn.ModuleList(UpSample(b, a) for a, b in zip(reversed(widths[:-1]), reversed(widths[1:])))
        self.decoder = nn.ModuleList(DoubleConv(2 * a, a, **block) for a in reversed(widths[:-1]))
        self.head = nn.Conv2d(widths[0], num_classes, 3, padding=1)
        self.final_activation = _final_activation(final_activation)
        self.feature_info = FeatureInfoList([FeatureInfo(widths[0], 1, "stem")])
        self.feature_info += [FeatureInfo(w, 2 ** (i + 1), f"encoder.{i}") for i, w in enumerate(widths[1:])]

    def get_classifier(self) -> nn.Module:
        """The output conv (``head``)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """timm's: a fresh 3x3 ``head`` conv with ``num_classes`` output channels; recorded like ``replace_head``."""
        _reset_head(self, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x, h, w = _pad_to_multiple(x, 2**self.depth)  # (B, C, H', W'), H' and W' multiples of 2**depth
        x = self.stem(x)
        skips = [x]
        for down, enc in zip(self.downs, self.encoder):
            x = enc(down(x))  # (B, w_i, H'/2**i, W'/2**i)
            skips.append(x)
        skips.pop()  # the bottleneck is not a skip
        for up, dec in zip(self.ups, self.decoder):
            x = dec(up(x, skips.pop()))  # (B, w_i, 2h, 2w)
        x = self.final_activation(self.head(x))  # (B, num_classes, H', W')
        return x[..., :h, :w]


class EncoderUNet(nn.Module):
    """A U-Net decoder on any encoder that reports ``feature_info``.

    Each decoder stage upsamples x2, concatenates the encoder map of that
    stride and applies a double conv; stages continue down to stride 1.
    ``encoder`` keeps the wrapped model's state-dict keys for its used layers.

    Example::

        >>> m = EncoderUNet(create_model("resnet18", num_classes=0), num_classes=2).eval()
        >>> m(torch.rand(1, 3, 100, 120)).shape
        torch.Size([1, 2, 100, 120])
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        num_classes: int = 1,
        decoder_widths: Sequence[int] = (256, 128, 64, 32, 16),
        dropout: Sequence[float] = (0.0, 0.0),
        norm_layer: str | Layer | None = None,
        act_layer: str | Layer | None = None,
        final_activation: str | None = None,
    ) -> None:
        super().__init__()
        info: list[FeatureInfo] = list(getattr(encoder, "feature_info", []))
        strides = [f.stride for f in info]
        if not info or strides != [2 ** (i + 1) for i in range(len(info))]:
            raise ModelConfigError(
                f"EncoderUNet needs an encoder whose feature_info has strides 2, 4, 8, ...; got {strides or 'none'} "
                f"from {type(encoder).__name__}."
            )
        if len(decoder_widths) != len(info):
            raise ModelConfigError(
                f"decoder_widths needs one width per encoder level ({len(info)}), got {list(decoder_widths)}."
            )
        norm = get_norm_layer(norm_layer, default=nn.BatchNorm2d)
        act = get_act_layer(act_layer, default=nn.ReLU)
        block = dict(dropout=tuple(dropout), norm_layer=norm, act_layer=act)
        self.encoder = LayerGetter(encoder, {f.module: str(i) for i, f in enumerate(info)})
        self.max_stride = strides[-1]
        self.num_classes = num_classes

        skips = [f.channels for f in reversed(info[:-1])] + [0]  # coarse to fine; stride 1 has no skip
        in_ch = info[-1].channels
        blocks = []
        for skip, width in zip(skips, decoder_widths):
            blocks.append(DoubleConv(in_ch + skip, width, **block))
            in_ch = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, num_classes, 3, padding=1)
        self.final_activation = _final_activation(final_activation)
        self.feature_info = FeatureInfoList(FeatureInfo(f.channels, f.stride, f"encoder.{f.module}") for f in info)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """timm's: a fresh 3x3 ``head`` conv with ``num_classes`` output channels; recorded like ``replace_head``."""
        _reset_head(self, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x, h, w = _pad_to_multiple(x, self.max_stride)
        feats = list(self.encoder(x).values())  # fine to coarse: (B, C_i, H/2**(i+1), W/2**(i+1))
        y = feats.pop()
        for dec in self.decoder:
            y = F.interpolate(y, scale_factor=2.0, mode="nearest")
            y = dec(torch.cat([y, feats.pop()], dim=1) if feats else y)
        y = self.final_activation(self.head(y))  # (B, num_classes, H', W')
        return y[..., :h, :w]


def _reset_head(model: UNet | EncoderUNet, num_classes: int) -> None:
    if num_classes < 1:
        raise ModelConfigError(f"a U-Net needs num_classes >= 1 output channels, got {num_classes}.")
    set_classifier(model, "head", nn.Conv2d(model.head.in_channels, num_classes, 3, padding=1), num_classes)


# registered entry points


@register_model
@keywords_of(UNet)
def unet(**kwargs: Any) -> UNet:
    """The tutorial's U-Net by default (32,090,627 parameters); keyword arguments as :class:`UNet`.

    >>> create_model("unet", widths=(16, 32, 64), num_classes=5, final_activation="softmax")(torch.rand(1, 3, 30, 30)).shape
    torch.Size([1, 5, 30, 30])
    """
    return UNet(**kwargs)


def unet_on_resnet(
    *,
    backbone_name: str = "resnet34",
    in_chans: int = 3,
    num_classes: int = 1,
    decoder_widths: Sequence[int] = (256, 128, 64, 32, 16),
    dropout: Sequence[float] = (0.0, 0.0),
    norm_layer: str | Layer | None = None,
    act_layer: str | Layer | None = None,
    final_activation: str | None = None,
    backbone_weights: str | bool | None = None,
) -> EncoderUNet:
    """A U-Net decoder on a zoo ResNet encoder (see :class:`EncoderUNet`); logits by default.

    ``backbone_weights``: pretrained weights of ``backbone_name`` for the encoder (a tag, or True for its
    default; ``torchsmith.list_pretrained``); the decoder keeps its initial values.
    """
    encoder = build_resnet(backbone_name, num_classes=0, in_chans=in_chans, norm_layer=norm_layer)
    if backbone_weights is not None and backbone_weights is not False:
        load_pretrained(encoder, backbone_name, backbone_weights, backbone=True)
    model = EncoderUNet(
        encoder,
        num_classes=num_classes,
        decoder_widths=decoder_widths,
        dropout=dropout,
        norm_layer=norm_layer,
        act_layer=act_layer,
        final_activation=final_activation,
    )
    model.in_chans = in_chans
    return with_backbone_cfg(model, encoder)


@register_model
@keywords_of(unet_on_resnet, fixed=("backbone_name",))
def unet_resnet18(**kwargs: Any) -> EncoderUNet:
    """U-Net decoder on a resnet18 encoder (see :class:`EncoderUNet`); logits by default."""
    return unet_on_resnet(backbone_name="resnet18", **kwargs)


@register_model
@keywords_of(unet_on_resnet, fixed=("backbone_name",))
def unet_resnet34(**kwargs: Any) -> EncoderUNet:
    """U-Net decoder on a resnet34 encoder (see :class:`EncoderUNet`); logits by default."""
    return unet_on_resnet(backbone_name="resnet34", **kwargs)


@register_model
@keywords_of(unet_on_resnet, fixed=("backbone_name",))
def unet_resnet50(**kwargs: Any) -> EncoderUNet:
    """U-Net decoder on a resnet50 encoder (see :class:`EncoderUNet`); logits by default."""
    return unet_on_resnet(backbone_name="resnet50", **kwargs)
