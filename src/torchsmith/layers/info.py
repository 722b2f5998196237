"""What a model says about its intermediate feature maps."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

__all__ = ["FeatureInfo"]


Layout = Literal["channels_first", "channels_last", "tokens"]


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a model produces: its channels, its stride (input size /
    map size) and the dotted name of the module that outputs it.

    ``layout`` says where the channels are: ``"channels_first"`` (``(B, C)``,
    ``(B, C, L)``, ``(B, C, H, W)`` ...; the default, not printed),
    ``"channels_last"`` (``(B, H, W, C)``: swin) or ``"tokens"`` (``(B, L, C)``:
    a sequence, ViT / BERT; stride 0 unless the model declares one).

    Example::

        >>> FeatureInfo(channels=256, stride=4, module="layer1")
        FeatureInfo(channels=256, stride=4, module='layer1')
        >>> FeatureInfo(96, 4, "layers.0", layout="channels_last").layout
        'channels_last'
    """

    channels: int
    stride: int
    module: str
    layout: Layout = "channels_first"

    def __repr__(self) -> str:
        layout = f", layout={self.layout!r}" if self.layout != "channels_first" else ""
        return f"FeatureInfo(channels={self.channels}, stride={self.stride}, module={self.module!r}{layout})"

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)
