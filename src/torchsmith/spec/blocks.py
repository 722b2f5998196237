"""Blocks torchsmith registers for specs: the tutorial's U-Net blocks, as the zoo builds them.

    >>> import torch
    >>> DoubleConv(3, 64)(torch.rand(1, 3, 16, 16)).shape    # (B, in, H, W) -> (B, out, H, W)
    torch.Size([1, 64, 16, 16])
    >>> DownSample(64)(torch.rand(1, 64, 16, 16)).shape      # (B, C, H, W) -> (B, C, H/2, W/2)
    torch.Size([1, 64, 8, 8])
"""

from __future__ import annotations

from torch import nn

from ..codec import get_act_layer, get_norm_layer
from ..zoo.unets import DoubleConv as _DoubleConv
from ..zoo.unets import DownSample as _DownSample
from .names import register_block

__all__ = ["DoubleConv", "DownSample"]


@register_block(name="DoubleConv")
def DoubleConv(  # noqa: N802 - named as specs write it
    in_channels: int,
    out_channels: int,
    *,
    dropout: tuple[float, float] = (0.3, 0.4),
    norm_layer: str = "batchnorm",
    act_layer: str = "leaky_relu",
) -> nn.Module:
    """The zoo U-Net's double conv: (3x3 conv, norm, dropout, act) x 2, children 0..7."""
    return _DoubleConv(
        in_channels, out_channels, dropout=tuple(dropout), norm_layer=get_norm_layer(norm_layer), act_layer=get_act_layer(act_layer)
    )


@register_block(name="DownSample")
def DownSample(in_channels: int, *, act_layer: str = "leaky_relu") -> nn.Module:  # noqa: N802
    """The zoo U-Net's downsampling: stride-2 3x3 conv keeping the channels, then act (children 0, 1)."""
    return _DownSample(in_channels, act_layer=get_act_layer(act_layer))
