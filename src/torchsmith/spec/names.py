"""What a name in a spec can mean: a torch.nn layer from an explicit allow-list, a registered block,
a graph op, or a registered model. Nothing else resolves; nothing is imported or evaluated.

``register_block`` and ``register_op`` add names; they only record (they never rewrite what they register).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from ..codec import CONTAINERS as NN_CONTAINERS
from ..codec import NN_LAYERS
from ..errors import DuplicateModelError, SpecError

__all__ = ["register_block", "register_op", "NN_LAYERS", "CONTAINERS", "AUTO_PARAMS", "Op"]

F = TypeVar("F", bound=Callable[..., Any])

# container names a spec spells out; their values are layers, not arguments (the torch.nn layers a spec may
# name are the codec's allow-list, NN_LAYERS)
CONTAINERS = (*NN_CONTAINERS, "Graph")

# arguments that may be "auto": the width is read from the incoming tensor (dim -1 for features, dim 1 otherwise)
AUTO_PARAMS = {"in_features": -1, "in_channels": 1, "num_features": 1}

_BLOCKS: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class Op:
    """A graph op: a function of one or more tensors and keyword arguments, no parameters."""

    name: str
    fn: Callable[..., Any]
    min_inputs: int
    max_inputs: int | None  # None: any number

    def arity(self) -> str:
        if self.max_inputs == self.min_inputs:
            return f"{self.min_inputs} input{'s' if self.min_inputs != 1 else ''}"
        if self.max_inputs is None:
            return f"{self.min_inputs} or more inputs"
        return f"{self.min_inputs} to {self.max_inputs} inputs"


_OPS: dict[str, Op] = {}


def _taken(name: str) -> str | None:
    if name in CONTAINERS:
        return "a container name"
    if name in NN_LAYERS:
        return f"torch.nn.{name}"
    if name in _BLOCKS:
        fn = _BLOCKS[name]
        return f"the block {fn.__module__}.{fn.__qualname__}"
    if name in _OPS:
        return f"the graph op {_OPS[name].fn.__module__}.{_OPS[name].fn.__qualname__}"
    if name in ("repeat", "from", "args"):
        return "a spec keyword"
    return None


def register_block(fn: F | None = None, *, name: str | None = None) -> Any:
    """Let specs name a block: an ``nn.Module`` class or a function returning one.

    Works as ``@register_block`` or ``@register_block(name="my_block")``. A spec then writes
    ``{my_block: [args]}`` or ``{my_block: {kwarg: value}}``; an argument named ``in_channels``,
    ``in_features`` or ``num_features`` may be ``"auto"``. A saved model that uses the block needs the
    module that registers it imported before ``load_model``.

    Raises:
        DuplicateModelError: the name is taken (by a torch.nn layer, a container, an op or another block).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> import torchsmith
        >>> @register_block(name="ConvAct")
        ... def conv_act(in_channels: int, out_channels: int) -> nn.Module:
        ...     return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU())
        >>> m = torchsmith.build({"input": [1, 3, 8, 8], "layers": [{"ConvAct": ["auto", 16]}]})
        >>> m(torch.rand(1, 3, 8, 8)).shape                    # (B, 16, H, W)
        torch.Size([1, 16, 8, 8])
    """

    def wrap(target: F) -> F:
        key = name or target.__name__
        taken = _taken(key)
        if taken:
            raise DuplicateModelError(
                f"register_block: the name {key!r} is already {taken}; pick another with @register_block(name=...)."
            )
        if not callable(target):
            raise SpecError(f"register_block: {target!r} is not a class or function.")
        _BLOCKS[key] = target
        return target

    return wrap(fn) if fn is not None else wrap


def register_op(name: str, *, inputs: int | tuple[int, int | None] = 1) -> Callable[[F], F]:
    """Register a graph op ``fn(*tensors, **kwargs)`` under ``name`` taking ``inputs`` tensors
    (a count, or ``(min, max)`` with ``max=None`` for any number).

    Raises:
        DuplicateModelError: the name is taken.
    """
    lo, hi = (inputs, inputs) if isinstance(inputs, int) else inputs

    def wrap(fn: F) -> F:
        taken = _taken(name)
        if taken:
            raise DuplicateModelError(f"register_op: the name {name!r} is already {taken}; pick another.")
        _OPS[name] = Op(name, fn, lo, hi)
        return fn

    return wrap


def blocks() -> dict[str, Callable[..., nn.Module]]:
    """The registered blocks (a copy)."""
    return dict(_BLOCKS)


def ops() -> dict[str, Op]:
    """The registered graph ops (a copy)."""
    return dict(_OPS)


# signatures and argument types


def signature(target: Callable[..., Any]) -> inspect.Signature | None:
    """The call signature with annotations evaluated where possible; None if there is none."""
    try:
        return inspect.signature(target, eval_str=True)
    except Exception:
        try:
            return inspect.signature(target)
        except (TypeError, ValueError):
            return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list) or tp in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _type_name(args[0]) if args else "value"
        return f"list of {inner}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any) -> str | None:
    """None if the plain (JSON) ``value`` fits the annotation ``tp``, else the expected type's name.

    Unknown annotations accept anything: the layer itself is the final judge.
    """
    if tp is inspect.Parameter.empty or tp is Any:
        return None
    origin = typing.get_origin(tp)
    ok: bool | None
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        ok = any(check_type(value, a) is None for a in typing.get_args(tp))
    elif origin is typing.Literal:
        ok = value in typing.get_args(tp)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is type(None):
        ok = value is None
    elif origin in (tuple, list) or tp in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            ok = False
        elif not args:
            ok = True
        elif origin is tuple and Ellipsis not in args:
            ok = len(value) == len(args) and all(check_type(v, a) is None for v, a in zip(value, args))
        else:
            ok = all(check_type(v, args[0]) is None for v in value)
    else:
        return None
    return None if ok else _type_name(tp)
