"""What a model says about its intermediate feature maps, in our fields and timm's.

A model holds a :class:`FeatureInfoList` as ``feature_info``: one :class:`FeatureInfo` per level,
shallow to deep. timm's names read the same values: on an entry, ``num_chs`` is ``channels`` and
``reduction`` is ``stride``; on the list, ``channels()``, ``reduction()`` and ``module_name()``
give one value per level (or the level at an index, or at a list of indices), as timm's
``FeatureInfo`` does.

    >>> info = create_model("resnet18").feature_info
    >>> info.channels(), info.reduction(), info.module_name(-1)
    ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32], 'layer4')
    >>> info[-1].num_chs, info.reduction([1, 4])
    (512, [4, 32])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, SupportsIndex, overload

__all__ = ["FeatureInfo", "FeatureInfoList"]


Layout = Literal["channels_first", "channels_last", "tokens"]
Index = int | list[int] | tuple[int, ...] | None

# timm's key names -> our fields
_TIMM_KEYS = {"num_chs": "channels", "reduction": "stride", "module": "module"}


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
        >>> FeatureInfo(256, 4, "layer1").num_chs, FeatureInfo(256, 4, "layer1").reduction   # timm's names
        (256, 4)
    """

    channels: int
    stride: int
    module: str
    layout: Layout = "channels_first"

    @property
    def num_chs(self) -> int:
        """timm's name for :attr:`channels`."""
        return self.channels

    @property
    def reduction(self) -> int:
        """timm's name for :attr:`stride` (input size / map size)."""
        return self.stride

    def __repr__(self) -> str:
        layout = f", layout={self.layout!r}" if self.layout != "channels_first" else ""
        return f"FeatureInfo(channels={self.channels}, stride={self.stride}, module={self.module!r}{layout})"

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)


class FeatureInfoList(list):
    """A model's ``feature_info``: a list of :class:`FeatureInfo`, shallow to deep, with timm's accessors.

    ``channels(idx)``, ``reduction(idx)`` and ``module_name(idx)`` follow timm's ``FeatureInfo``:
    without ``idx`` one value per level, with an int the value at that level, with a list or
    tuple one value per index given. ``get_dicts()`` gives timm's dicts (``num_chs``,
    ``reduction``, ``module``). It prints, compares and slices as a list.

        >>> info = FeatureInfoList([FeatureInfo(64, 4, "layer1"), FeatureInfo(128, 8, "layer2")])
        >>> info
        [FeatureInfo(channels=64, stride=4, module='layer1'), FeatureInfo(channels=128, stride=8, module='layer2')]
        >>> info.channels(), info.reduction(0), info.module_name([1, 0])
        ([64, 128], 4, ['layer2', 'layer1'])
        >>> info.get_dicts(keys=["num_chs"])
        [{'num_chs': 64}, {'num_chs': 128}]
    """

    @overload
    def __getitem__(self, index: SupportsIndex) -> FeatureInfo: ...
    @overload
    def __getitem__(self, index: slice) -> FeatureInfoList: ...
    def __getitem__(self, index):
        item = super().__getitem__(index)
        return FeatureInfoList(item) if isinstance(index, slice) else item

    def get(self, key: str, idx: Index = None) -> Any:
        """The field ``key`` (ours, ``"channels"``, or timm's, ``"num_chs"``) per level, at ``idx``, or at each of ``idx``."""
        field = _TIMM_KEYS.get(key, key)
        if idx is None:
            return [getattr(f, field) for f in self]
        if isinstance(idx, (list, tuple)):
            return [getattr(self[i], field) for i in idx]
        return getattr(self[idx], field)

    def get_dicts(self, keys: Sequence[str] | None = None, idx: Index = None) -> Any:
        """timm's dicts (``num_chs``, ``reduction``, ``module``, or just ``keys``) per level, at ``idx``, or at each of ``idx``."""
        keys = list(_TIMM_KEYS) if keys is None else list(keys)

        def one(f: FeatureInfo) -> dict[str, Any]:
            return {k: getattr(f, _TIMM_KEYS.get(k, k)) for k in keys}

        if idx is None:
            return [one(f) for f in self]
        if isinstance(idx, (list, tuple)):
            return [one(self[i]) for i in idx]
        return one(self[idx])

    def channels(self, idx: Index = None) -> Any:
        """Channels per level (timm's ``num_chs``), at ``idx``, or at each of ``idx``."""
        return self.get("channels", idx)

    def reduction(self, idx: Index = None) -> Any:
        """Stride per level (timm's ``reduction``: input size / map size), at ``idx``, or at each of ``idx``."""
        return self.get("stride", idx)

    def module_name(self, idx: Index = None) -> Any:
        """The dotted name of the module giving each level, at ``idx``, or at each of ``idx``."""
        return self.get("module", idx)
