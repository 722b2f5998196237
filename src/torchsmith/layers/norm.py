"""Normalisation layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FrozenBatchNorm2d"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers.

    State-dict keys are torchvision's (``weight``, ``bias``, ``running_mean``,
    ``running_var``); a ``num_batches_tracked`` entry from a regular BatchNorm
    checkpoint is accepted and dropped.

    Example::

        >>> bn = FrozenBatchNorm2d(64)
        >>> bn(torch.randn(2, 64, 8, 8)).shape          # (B, C, H, W) -> same
        torch.Size([2, 64, 8, 8])
        >>> sorted(bn.state_dict())
        ['bias', 'running_mean', 'running_var', 'weight']
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.modules.batchnorm._BatchNorm) -> "FrozenBatchNorm2d":
        """A frozen copy of a (trained) BatchNorm layer, on its device and dtype."""
        frozen = cls(bn.num_features, eps=bn.eps)
        ref = bn.running_mean if bn.running_mean is not None else bn.weight
        frozen = frozen.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats and bn.running_mean is not None:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        return frozen

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
