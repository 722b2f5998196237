"""Name -> builder registry.

The registry only maps names to builders. Building through it (or calling a
registered builder directly) records the builder's name and its keyword
arguments on the model as ``model.torchsmith_config``, so a whole model can be
rebuilt from configuration later (``save_model`` / specs).

Example::

    >>> import torchsmith
    >>> m = torchsmith.create_model("resnet18", num_classes=10)
    >>> m.torchsmith_config
    {'name': 'resnet18', 'kwargs': {'num_classes': 10}}
    >>> torchsmith.list_models("resnet1*")
    ['resnet101', 'resnet152', 'resnet18']
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from .errors import DuplicateModelError, ModelConfigError, UnknownModelError, closest

__all__ = ["register_model", "create_model", "list_models", "get_model_builder", "model_config"]

CONFIG_ATTR = "torchsmith_config"

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def _bound_kwargs(fn: Callable[..., Any], args: tuple, kwargs: dict, *, name: str) -> dict[str, Any]:
    """The arguments of a call as ``{name: value}``, defaults left out.

    Raises:
        ModelConfigError: the arguments do not fit the builder's signature.
    """
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        accepted = [p for p in sig.parameters if p != "self"]
        raise ModelConfigError(
            f"{name}: {exc}. It accepts the keyword arguments {accepted}; see help(torchsmith.zoo.{name}) "
            f"or the builder's docstring."
        ) from None
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                out[name] = list(value)
        else:
            out[name] = value
    return out


def _record(model: Any, name: str, kwargs: dict[str, Any]) -> None:
    if isinstance(model, nn.Module):
        # a plain attribute: not a parameter, buffer or submodule, so no state_dict key
        object.__setattr__(model, CONFIG_ATTR, {"name": name, "kwargs": dict(kwargs)})


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a model builder (function or ``nn.Module`` class) under its name.

    Works as ``@register_model`` or ``@register_model(name="my_net")``. Every
    model built by the builder remembers ``{"name", "kwargs"}`` in
    ``model.torchsmith_config``. For a class, the constructor's arguments are
    recorded on every instance, however it is created.

    Raises:
        DuplicateModelError: the name is already registered.

    Example::

        >>> @register_model
        ... class TinyNet(nn.Module):
        ...     def __init__(self, *, width: int = 8):
        ...         super().__init__()
        ...         self.fc = nn.Linear(width, 2)
        >>> create_model("TinyNet", width=4).torchsmith_config
        {'name': 'TinyNet', 'kwargs': {'width': 4}}
    """

    def wrap(target: F) -> F:
        key = name or target.__name__
        if key in _REGISTRY:
            raise DuplicateModelError(
                f"register_model: a model named {key!r} is already registered "
                f"(by {_REGISTRY[key].__module__}.{_REGISTRY[key].__qualname__}); "
                f"pick another name with @register_model(name=...)."
            )
        if isinstance(target, type):
            init = target.__init__

            @functools.wraps(init)
            def __init__(self, *args, **kwargs):
                recorded = _bound_kwargs(init, (self, *args), kwargs, name=key)
                init(self, *args, **kwargs)
                if type(self) is target:  # subclasses are not this registered model
                    recorded.pop(next(iter(inspect.signature(init).parameters)))  # `self`
                    _record(self, key, recorded)

            target.__init__ = __init__  # type: ignore[misc]
            _REGISTRY[key] = target
            return target

        @functools.wraps(target)
        def builder(*args, **kwargs):
            recorded = _bound_kwargs(target, args, kwargs, name=key)
            model = target(*args, **kwargs)
            _record(model, key, recorded)
            return model

        builder.model_name = key  # type: ignore[attr-defined]
        _REGISTRY[key] = builder
        return builder  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``.

    Raises:
        UnknownModelError: naming the closest registered names.
    """
    _ensure_zoo()
    try:
        return _REGISTRY[name]
    except KeyError:
        hint = closest(name, _REGISTRY)
        did_you_mean = f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""
        raise UnknownModelError(
            f"No model named {name!r} is registered.{did_you_mean} "
            f"See torchsmith.list_models() for all {len(_REGISTRY)} names."
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments.

    Example::

        >>> m = create_model("resnet50", num_classes=20)
        >>> m(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 20])
    """
    return get_model_builder(name)(**kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching an ``fnmatch`` pattern (``"resnet*"``)."""
    _ensure_zoo()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """``{"name", "kwargs"}`` recorded when ``model`` was built through the registry, else None."""
    cfg = getattr(model, CONFIG_ATTR, None)
    return None if cfg is None else {"name": cfg["name"], "kwargs": dict(cfg["kwargs"])}


def _ensure_zoo() -> None:
    # the zoo registers itself on import; importing here keeps `registry` free of zoo imports at load time
    from . import zoo  # noqa: F401
