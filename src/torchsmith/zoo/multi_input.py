"""A backbone with a second input: its features fused with an extra vector, then a linear head.

Built by :func:`torchsmith.add_inputs` (the tutorial's two-input model); usable on its own too.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..runner import main_output
from ..errors import SurgeryError

__all__ = ["MultiInputModel"]


def check_fusion(*, extra_features: int, num_classes: int, fusion: str, dropout: float) -> None:
    """Refuse what :class:`MultiInputModel` cannot build, with :class:`SurgeryError` (``add_inputs`` asks
    before it changes the model)."""
    if fusion not in ("concat", "add"):
        raise SurgeryError(f"fusion must be 'concat' or 'add', got {fusion!r}.")
    if extra_features < 1 or num_classes < 1:
        raise SurgeryError(f"extra_features and num_classes must be >= 1, got {extra_features} and {num_classes}.")
    if not 0.0 <= dropout <= 1.0:
        raise SurgeryError(f"dropout must be a probability in [0, 1], got {dropout}.")


class MultiInputModel(nn.Module):
    """``forward(image, extra)``: a backbone's features fused with an extra vector, then a linear head.

    ``features = drop(act(backbone(image)))`` (``act_layer`` and ``dropout``,
    default none), then ``fusion="concat"``: ``head(cat([features, extra]))``;
    ``"add"``: ``head(features + project(extra))``. Returns logits (no softmax:
    losses such as ``cross_entropy`` take logits).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_features: int,
        extra_features: int,
        num_classes: int,
        fusion: Literal["concat", "add"] = "concat",
        act_layer: type[nn.Module] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_fusion(extra_features=extra_features, num_classes=num_classes, fusion=fusion, dropout=dropout)
        self.num_features = num_features
        self.extra_features = extra_features
        self.num_classes = num_classes
        self.fusion = fusion
        self.backbone = backbone
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.project = nn.Linear(extra_features, num_features) if fusion == "add" else nn.Identity()
        fused = num_features + extra_features if fusion == "concat" else num_features
        self.head = nn.Linear(fused, num_classes)

    def forward(self, image: Tensor, extra: Tensor) -> Tensor:
        if extra.dim() == 1 and self.extra_features == 1:
            extra = extra.unsqueeze(1)  # (B,) -> (B, 1): one scalar per sample
        if extra.dim() != 2 or extra.shape[1] != self.extra_features:
            raise SurgeryError(
                f"extra input must be (B, {self.extra_features}) (extra_features={self.extra_features}), got {tuple(extra.shape)}."
            )
        features = self.backbone(image)
        if not isinstance(features, Tensor):  # a dict output (transformers' ModelOutput): its prediction
            features = main_output(features)
        features = self.drop(self.act(features))  # (B, F)
        extra = extra.to(features.dtype)
        if self.fusion == "concat":
            fused = torch.cat([features, extra], dim=1)  # (B, F + E)
        else:
            fused = features + self.project(extra)  # (B, F)
        return self.head(fused)  # (B, num_classes)
