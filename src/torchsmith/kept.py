"""The model as it was: every module's class, attributes, slots, hooks and modes put back after a run
(:func:`untouched`, used by every probe of :mod:`torchsmith.runner`), or after a failed edit
(:func:`restored_on_failure`, around every surgery edit and its self-check).

Nothing here changes a model but the restores themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

__all__ = ["modes_kept", "untouched", "restored_on_failure"]


@contextmanager
def modes_kept(model: nn.Module, *, training: bool | None = None) -> Iterator[nn.Module]:
    """Restore every submodule's ``training`` flag on exit, optionally setting one mode inside."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


def _plain_copy(value: Any, memo: dict[int, Any]) -> Any:
    """``value`` with every dict and list inside copied (shared ones stay shared); anything else kept."""
    if not isinstance(value, (dict, list)):
        return value
    if id(value) not in memo:
        memo[id(value)] = out = copy.copy(value)  # of its own type (timm's FeatureInfoList is a list)
        for k in range(len(out)) if isinstance(out, list) else list(out):
            out[k] = _plain_copy(out[k], memo)
    return memo[id(value)]


def _saved(model: nn.Module, *, values: bool = False, nested: bool = False) -> Callable[[], None]:
    """What :func:`untouched` restores, saved; returns the function that restores it. ``nested``: dicts and
    lists inside attributes are copied all the way down, and parameters' ``requires_grad`` kept too."""
    memo: dict[int, Any] = {}
    copied = (lambda v: _plain_copy(v, memo)) if nested else (lambda v: v.copy() if isinstance(v, dict) else v)
    saved = [(module, type(module), {k: copied(v) for k, v in module.__dict__.items()}) for module in model.modules()]
    buffers = [(b, b.clone()) for b in model.buffers() if not is_lazy(b)] if values else []
    lazy = [(t, type(t), t.data) for t in [*model.parameters(), *model.buffers()] if is_lazy(t)]
    grads = [(p, p.requires_grad) for p in model.parameters()] if nested else []

    def restore() -> None:
        for tensor, cls, data in lazy:  # materialised in place (UninitializedParameter -> Parameter)
            if type(tensor) is not cls:
                tensor.data = data
                tensor.__class__ = cls
        for module, cls, state in saved:
            if type(module) is not cls:  # a lazy module materialised (LazyLinear -> Linear)
                module.__class__ = cls
            current = module.__dict__
            for key in [k for k in current if k not in state]:
                del current[key]
            for key, value in state.items():
                now = current.get(key)
                if isinstance(value, dict) and isinstance(now, dict) and type(now) is type(value):
                    now.clear()
                    now.update(value)
                else:
                    current[key] = value
        with torch.no_grad():
            for buffer, value in buffers:
                if buffer.shape == value.shape:
                    buffer.copy_(value)
        for param, flag in grads:
            param.requires_grad_(flag)

    return restore


@contextmanager
def untouched(model: nn.Module, *, values: bool = False) -> Iterator[nn.Module]:
    """Put every module back on exit: its class, plain attributes, parameter / buffer / submodule slots,
    hook dicts (in place: handles keep pointing at them), ``training``, and lazy parameters a forward
    materialised. With ``values=True`` buffer values are restored too (for code that runs the model's
    own buffers, such as fx tracing)."""
    restore = _saved(model, values=values)
    try:
        yield model
    finally:
        restore()


@contextmanager
def restored_on_failure(model: nn.Module) -> Iterator[nn.Module]:
    """Leave ``model`` exactly as it was if the body raises: what :func:`untouched` restores, plus dicts
    and lists held in attributes (a recorded config) and ``requires_grad``. Surgery edits run in it.

    >>> model = nn.Sequential(nn.Linear(4, 2))
    >>> try:
    ...     with restored_on_failure(model):
    ...         model[0] = nn.Linear(4, 3)
    ...         raise ValueError("its check failed")
    ... except ValueError:
    ...     pass
    >>> model[0].out_features
    2
    """
    restore = _saved(model, nested=True)
    try:
        yield model
    except BaseException:
        restore()
        raise
