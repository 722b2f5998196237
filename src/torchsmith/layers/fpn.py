"""Feature Pyramid Network (Lin et al., 2017) with torchvision's module names.

Lateral 1x1 convs bring every input level to ``out_channels``; a top-down pass
adds the nearest-upsampled coarser level; 3x3 convs smooth each sum. Extra
blocks append coarser levels (``pool`` for detection, ``p6``/``p7`` for
RetinaNet).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelConfigError

__all__ = ["FeaturePyramidNetwork", "ExtraFPNBlock", "LastLevelMaxPool", "LastLevelP6P7"]


class ExtraFPNBlock(nn.Module):
    """Base of the blocks that add levels after the pyramid.

    ``forward(results, x, names)`` gets the FPN outputs, the backbone inputs and
    the level names, and returns the extended ``(results, names)``.
    """

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        raise NotImplementedError


class LastLevelMaxPool(ExtraFPNBlock):
    """Adds level ``pool``: max-pool (kernel 1, stride 2) of the coarsest output."""

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        names.append("pool")
        results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))  # (B, C, ceil(H/2), ceil(W/2))
        return results, names


class LastLevelP6P7(ExtraFPNBlock):
    """Adds ``p6`` and ``p7`` (RetinaNet): stride-2 3x3 convs on P5 (or C5 when widths differ)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.kaiming_uniform_(module.weight, a=1)
            nn.init.constant_(module.bias, 0)
        self.use_P5 = in_channels == out_channels

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        source = results[-1] if self.use_P5 else x[-1]
        p6 = self.p6(source)
        p7 = self.p7(F.relu(p6))
        results.extend([p6, p7])
        names.extend(["p6", "p7"])
        return results, names


def _conv_norm(in_ch: int, out_ch: int, kernel: int, norm_layer: Callable[[int], nn.Module] | None) -> nn.Sequential:
    # torchvision's Conv2dNormActivation without activation: keys `<i>.0.weight` (+ `.0.bias` without norm)
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=(kernel - 1) // 2, bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_ch))
    return nn.Sequential(*layers)


class FeaturePyramidNetwork(nn.Module):
    """FPN over an ordered dict of feature maps, finest first.

    Args:
        in_channels_list: channels of each input level, finest first.
        out_channels: channels of every output level.
        extra_blocks: optional block adding coarser levels (``LastLevelMaxPool()``).
        norm_layer: optional norm after each conv (then convs have no bias).

    Example::

        >>> fpn = FeaturePyramidNetwork([64, 128], 32, extra_blocks=LastLevelMaxPool())
        >>> out = fpn(OrderedDict(a=torch.rand(1, 64, 32, 32), b=torch.rand(1, 128, 16, 16)))
        >>> {k: tuple(v.shape) for k, v in out.items()}
        {'a': (1, 32, 32, 32), 'b': (1, 32, 16, 16), 'pool': (1, 32, 8, 8)}
    """

    def __init__(
        self,
        in_channels_list: list[int],
        out_channels: int,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ModelConfigError(
                f"FeaturePyramidNetwork needs positive channel counts for each level, got {list(in_channels_list)}."
            )
        self.inner_blocks = nn.ModuleList(_conv_norm(c, out_channels, 1, norm_layer) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(_conv_norm(out_channels, out_channels, 3, norm_layer) for _ in in_channels_list)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        if extra_blocks is not None and not isinstance(extra_blocks, ExtraFPNBlock):
            raise ModelConfigError(
                f"extra_blocks must be an ExtraFPNBlock (LastLevelMaxPool, LastLevelP6P7), got {type(extra_blocks).__name__}."
            )
        self.extra_blocks = extra_blocks

    _version = 2  # 1: a conv per block (``inner_blocks.0.weight``), as torchvision's FPN before 0.13

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # checkpoints of the old layout (torchvision's too) load: ``inner_blocks.0.weight`` -> ``inner_blocks.0.0.weight``
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            for block in ("inner_blocks", "layer_blocks"):
                for i in range(len(self.inner_blocks)):
                    for kind in ("weight", "bias"):
                        old = f"{prefix}{block}.{i}.{kind}"
                        if old in state_dict:
                            state_dict[f"{prefix}{block}.{i}.0.{kind}"] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        names = list(x.keys())
        feats = list(x.values())
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        # top-down: lateral + upsampled coarser level, coarse to fine
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])  # (B, out, H_i, W_i)
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))
