"""Small models for the checkpoint tests (registered once, imported by several test files)."""

from __future__ import annotations

import torch
from torch import nn

from torchsmith import register_model


@register_model(name="ckpt_tiny")
class TinyNet(nn.Module):
    """conv-bn-relu, then a head; ``tie=True`` shares the embedding with the output layer."""

    def __init__(self, *, width: int = 4, classes: int = 3, tie: bool = False, act_layer=nn.ReLU, scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.embed = nn.Embedding(classes, width)
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = act_layer()
        self.head = nn.Linear(width, classes, bias=False)
        if tie:
            self.head.weight = self.embed.weight  # (classes, width) both

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.bn(self.conv(x))).mean((2, 3)))  # (B, classes)


def filled(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic, distinct values in every floating tensor (and a counter in int buffers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
            else:
                t.fill_(seed + 7)
    return model
