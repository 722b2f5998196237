"""What a model says about its intermediate feature maps."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a model produces: its channels, its stride (input size /
    map size) and the dotted name of the module that outputs it.

    Example::

        >>> FeatureInfo(channels=256, stride=4, module="layer1")
        FeatureInfo(channels=256, stride=4, module='layer1')
    """

    channels: int
    stride: int
    module: str

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)
