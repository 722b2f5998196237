"""Thin registered entry points over a model class or function."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..registry import register_model


def entry_point(name: str, fn: Callable[..., nn.Module], doc: str, **fixed: Any) -> Callable[..., nn.Module]:
    """Register ``name`` as ``fn`` with some arguments ``fixed``.

    The entry point's signature is ``fn``'s keyword arguments minus ``fixed``,
    so help(), the registry's argument check and recorded configs see exactly
    what a user may pass.
    """
    sig = inspect.signature(fn)
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in sig.parameters.items() if n not in fixed]

    def builder(**kwargs: Any) -> nn.Module:
        return fn(**fixed, **kwargs)

    returns = fn if isinstance(fn, type) else sig.return_annotation
    builder.__signature__ = sig.replace(parameters=params, return_annotation=returns)  # type: ignore[attr-defined]
    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = fn.__module__
    builder.__doc__ = doc
    return register_model(builder, name=name)
