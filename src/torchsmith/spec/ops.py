"""The graph ops a spec can name in a node: merges (``concat``, ``add``, ``multiply``) and
parameter-free reshapes (``interpolate``, ``pad_to_multiple``, ``crop_like``).

    >>> import torch
    >>> concat(torch.ones(1, 2, 4, 4), torch.zeros(1, 3, 4, 4), dim=1).shape
    torch.Size([1, 5, 4, 4])
    >>> x = pad_to_multiple(torch.ones(1, 3, 30, 17), multiple=16)    # zeros right and bottom
    >>> x.shape, crop_like(x, torch.ones(1, 3, 30, 17)).shape
    (torch.Size([1, 3, 32, 32]), torch.Size([1, 3, 30, 17]))
"""

from __future__ import annotations

import functools
import operator

import torch
import torch.nn.functional as F
from torch import Tensor

from .names import register_op

__all__ = ["concat", "add", "multiply", "interpolate", "pad_to_multiple", "crop_like"]


@register_op("concat", inputs=(1, None))
def concat(*xs: Tensor, dim: int = 1) -> Tensor:
    """Concatenate along ``dim`` (channels by default): (B, C1, ...), (B, C2, ...) -> (B, C1 + C2, ...)."""
    return torch.cat(xs, dim=dim)


@register_op("add", inputs=(2, None))
def add(*xs: Tensor) -> Tensor:
    """Elementwise sum (broadcasting)."""
    return functools.reduce(operator.add, xs)


@register_op("multiply", inputs=(2, None))
def multiply(*xs: Tensor) -> Tensor:
    """Elementwise product (broadcasting)."""
    return functools.reduce(operator.mul, xs)


@register_op("interpolate", inputs=1)
def interpolate(
    x: Tensor,
    *,
    scale_factor: float | list[float] | None = None,
    size: int | list[int] | None = None,
    mode: str = "nearest",
    align_corners: bool | None = None,
) -> Tensor:
    """``F.interpolate``: (B, C, H, W) -> (B, C, H * s, W * s) or (B, C, *size)."""
    if isinstance(scale_factor, list):
        scale_factor = tuple(float(s) for s in scale_factor)  # type: ignore[assignment]
    elif scale_factor is not None:
        scale_factor = float(scale_factor)
    size_arg = tuple(size) if isinstance(size, list) else size
    return F.interpolate(x, size=size_arg, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


@register_op("pad_to_multiple", inputs=1)
def pad_to_multiple(x: Tensor, *, multiple: int, value: float = 0.0) -> Tensor:
    """Pad every dim after the channels at its end with ``value`` up to a multiple of ``multiple``.

    (B, C, H, W) -> (B, C, ceil(H / m) * m, ceil(W / m) * m); undo with ``crop_like``.
    """
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        pads += [0, (-size) % multiple]
    return F.pad(x, pads, value=value) if any(pads) else x


@register_op("crop_like", inputs=2)
def crop_like(x: Tensor, like: Tensor) -> Tensor:
    """Keep the start of every dim after the channels so they match ``like``'s: undoes ``pad_to_multiple``."""
    return x[(..., *(slice(0, s) for s in like.shape[2:]))]
