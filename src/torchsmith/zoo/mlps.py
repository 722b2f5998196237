"""A multi-layer perceptron: Linear -> act -> dropout, repeated, then a Linear.

``create_model("mlp")`` is the tutorial's 784-256-ReLU-10 network.

Example::

    >>> from torchsmith import create_model
    >>> m = create_model("mlp")
    >>> m(torch.randn(1, 784)).shape                      # (B, in_features) -> (B, num_classes)
    torch.Size([1, 10])
    >>> m(torch.randn(2, 1, 28, 28)).shape                # images are flattened
    torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..codec import get_act_layer
from ..errors import ModelConfigError
from ..layers import FeatureInfo, FeatureInfoList
from ..registry import register_model
from ._factory import keywords_of, set_classifier

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """``features`` (hidden Linear + act + dropout blocks) then ``head`` (Linear).

    Inputs with more than two dims are flattened from dim 1: (B, *) -> (B, in_features).
    """

    def __init__(
        self,
        *,
        in_features: int = 784,
        hidden: Sequence[int] = (256,),
        num_classes: int = 10,
        act_layer: str | Callable[..., nn.Module] | None = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        if any(n < 1 for n in [*sizes, num_classes]) or not 0.0 <= dropout < 1.0:
            raise ModelConfigError(
                f"MLP needs positive sizes and dropout in [0, 1), got in_features={in_features}, "
                f"hidden={list(hidden)}, num_classes={num_classes}, dropout={dropout}."
            )
        act = get_act_layer(act_layer, default=nn.ReLU)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), act()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], num_classes)
        self.in_features = in_features
        self.num_features = sizes[-1]
        self.num_classes = num_classes
        self.feature_info = FeatureInfoList([FeatureInfo(sizes[-1], 0, "features")])  # (B, C): no spatial dimension, stride 0

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """timm's: a fresh ``head`` with ``num_classes`` outputs (0: features); recorded like ``replace_head``."""
        if num_classes < 0:
            raise ModelConfigError(f"num_classes must be >= 0, got {num_classes}.")
        set_classifier(self, "head", nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity(), num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(torch.flatten(x, 1))  # (B, in_features) -> (B, hidden[-1])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
@keywords_of(MLP)
def mlp(**kwargs: Any) -> MLP:
    """The tutorial's 784-256-ReLU-10 MLP by default; keyword arguments as :class:`MLP`."""
    return MLP(**kwargs)
