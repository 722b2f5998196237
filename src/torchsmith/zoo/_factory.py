"""Entry points: plain ``def resnet50(**kwargs)`` functions that show the keywords of the class they build."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..pretrained import CFG_ATTR
from ..steps import record

F = TypeVar("F", bound=Callable[..., Any])


def keywords_of(target: Callable[..., Any], *, fixed: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give an entry point ``target``'s keyword arguments minus ``fixed`` as its signature.

    ``def resnet50(**kwargs): return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)`` then shows
    ``resnet50(*, num_classes=1000, in_chans=3, ...)`` to help(), and the registry checks a call's keywords
    against exactly what a user may pass.
    """
    sig = inspect.signature(target)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in sig.parameters.items() if n not in fixed]

    def wrap(fn: F) -> F:
        returns = target if isinstance(target, type) else sig.return_annotation
        fn.__signature__ = sig.replace(parameters=params, return_annotation=returns)  # type: ignore[attr-defined]
        return fn

    return wrap


def set_classifier(model: nn.Module, attr: str, new: nn.Module, num_classes: int) -> None:
    """``reset_classifier``'s common part: put ``new`` at ``attr`` on the model's device and dtype, keep
    ``model.num_classes`` true, and record the change as the ``replace_head`` step ``load_model`` replays."""
    ref = next(iter([*model.parameters(), *model.buffers()]), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
    setattr(model, attr, new)
    model.num_classes = num_classes
    record(model, "replace_head", num_classes=num_classes, path=attr)


def with_backbone_cfg(model: nn.Module, backbone: nn.Module) -> nn.Module:
    """Give a model built on a pretrained backbone the backbone's weights config (its preprocessing, for
    ``data_config``), without its classifier; returns ``model``."""
    cfg = getattr(backbone, CFG_ATTR, None)
    if cfg is not None:
        object.__setattr__(model, CFG_ATTR, {**cfg, "num_classes": None, "classifier": None})
    return model
