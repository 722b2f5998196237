"""Name -> builder registry.

The registry only maps names to builders; it never edits what it registers.
Building through a registered builder records the builder's name and its
keyword arguments on the model as ``model.torchsmith_config``; torchsmith's
surgery appends a JSON step for every change of structure it makes
(``"steps"``), so a whole model can be rebuilt from configuration later
(``save_model`` / ``load_model``).

Example::

    >>> import torchsmith
    >>> m = torchsmith.create_model("resnet18", num_classes=10)
    >>> m.torchsmith_config
    {'name': 'resnet18', 'kwargs': {'num_classes': 10}, 'steps': []}
    >>> torchsmith.list_models("resnet1*")
    ['resnet101', 'resnet101_fpn', 'resnet152', 'resnet152_fpn', 'resnet18', 'resnet18_fpn']
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from .codec import nn_layer
from .errors import DuplicateModelError, ModelConfigError, UnknownModelError, did_you_mean
from .pretrained import get_weights, is_rebuilding, load_pretrained

__all__ = [
    "register_model",
    "create_model",
    "create_layer",
    "list_models",
    "get_model_builder",
    "model_config",
    "update_config",
]

CONFIG_ATTR = "torchsmith_config"
WEIGHTS_KEYWORDS = ("pretrained", "weights", "weights_path")  # create_model's own, unless a builder takes them
TORCH_NN = "torch.nn."  # config names of torch.nn layers built through create_layer

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., Any])


# recording


def _bound_kwargs(fn: Callable[..., Any], args: tuple, kwargs: dict, *, name: str) -> dict[str, Any]:
    """The arguments of a call as ``{name: value}``, defaults left out.

    Raises:
        ModelConfigError: the arguments do not fit the builder's signature.
    """
    sig = inspect.signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        accepted = [p for p, v in sig.parameters.items() if p != "self" and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
        open_ended = any(v.kind is v.VAR_KEYWORD for v in sig.parameters.values())
        unknown = [k for k in kwargs if k not in accepted] if not open_ended else []
        problem = (f"{name}: unknown keyword argument{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
                   if unknown else f"{name}: {exc}")
        own = [k for k in WEIGHTS_KEYWORDS if k not in accepted]  # create_model's: a misspelling of them is theirs
        hint = "" if not unknown else (f" {unknown[0]!r} is create_model's keyword, not the builder's."
                                       if unknown[0] in own else did_you_mean(unknown[0], accepted + own))
        if any(k in own for k in unknown) or any(repr(k) in hint for k in own):
            hint += (f" Pretrained weights: torchsmith.create_model({name!r}, pretrained=True) (the default) or "
                     f"weights=TAG (torchsmith.list_pretrained({(name + '*')!r}) lists the tags).")
        raise ModelConfigError(
            f"{problem}.{hint} It accepts the keyword arguments {accepted}; see "
            f"help(torchsmith.get_model_builder({name!r}))."
        ) from None
    out: dict[str, Any] = {}
    for key, value in bound.arguments.items():
        kind = sig.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                out[key] = list(value)
        else:
            out[key] = value
    return out


def set_config(model: nn.Module, config: Mapping[str, Any]) -> None:
    """Attach ``{"name", "kwargs", "steps"}`` to ``model`` (a plain attribute: no state_dict key)."""
    record = {"name": config["name"], "kwargs": dict(config["kwargs"]), "steps": copy.deepcopy(list(config.get("steps", [])))}
    object.__setattr__(model, CONFIG_ATTR, record)


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a model builder (function or ``nn.Module`` class) under its name.

    Works as ``@register_model`` or ``@register_model(name="my_net")``. A
    model built through the registry (``create_model``, or a decorated
    function called directly) remembers ``{"name", "kwargs", "steps"}`` in
    ``model.torchsmith_config``. A decorated class is registered through a
    builder that records; the class itself is left exactly as it was, so
    ``TinyNet(...)`` called directly records nothing.

    Raises:
        DuplicateModelError: the name is already registered.

    Example::

        >>> @register_model
        ... class TinyNet(nn.Module):
        ...     def __init__(self, *, width: int = 8):
        ...         super().__init__()
        ...         self.fc = nn.Linear(width, 2)
        >>> create_model("TinyNet", width=4).torchsmith_config
        {'name': 'TinyNet', 'kwargs': {'width': 4}, 'steps': []}
        >>> hasattr(TinyNet(width=4), "torchsmith_config")       # the class is not rewritten
        False
    """

    def wrap(target: F) -> F:
        key = name or target.__name__
        if key in _REGISTRY:
            raise DuplicateModelError(
                f"register_model: a model named {key!r} is already registered "
                f"(by {_REGISTRY[key].__module__}.{_REGISTRY[key].__qualname__}); "
                f"pick another name with @register_model(name=...)."
            )

        @functools.wraps(target, updated=())
        def builder(*args: Any, **kwargs: Any) -> nn.Module:
            recorded = _bound_kwargs(target, args, kwargs, name=key)
            model = target(*args, **kwargs)
            if isinstance(model, nn.Module):
                set_config(model, {"name": key, "kwargs": recorded})
            return model

        builder.__signature__ = inspect.signature(target)  # type: ignore[attr-defined]
        builder.model_name = key  # type: ignore[attr-defined]
        _REGISTRY[key] = builder
        return target if isinstance(target, type) else builder  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


# lookup


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name`` (``"torch.nn.<Layer>"``: that allow-listed torch.nn layer, as
    :func:`create_layer`).

    Raises:
        UnknownModelError: naming the closest registered names (or allowed torch.nn layers).
    """
    if name.startswith(TORCH_NN):
        return functools.partial(create_layer, name.removeprefix(TORCH_NN))
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"No model named {name!r} is registered.{did_you_mean(name, _REGISTRY)} "
            f"See torchsmith.list_models() for all {len(_REGISTRY)} names."
        ) from None


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    weights_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments, optionally with pretrained weights.

    ``pretrained=True`` loads the model's default weights, ``weights="IMAGENET1K_V2"`` the weights of that tag
    (``torchsmith.list_pretrained()``; ``register_weights`` adds your own); ``weights_path`` reads them from that
    file instead of the torch hub cache or a download (hash-checked all the same). ``num_classes`` defaults to
    the weights'; with another value, everything but the classifier is loaded (logged as a warning). The
    config records ``weights`` (the tag), so ``save_model`` / ``load_model`` keep it (``data_config`` answers
    after a load) without reading the weights again: they come from the saved file. A builder that takes
    ``pretrained`` or ``weights`` itself gets them as they are.

    Raises:
        UnknownModelError: no such model. ModelConfigError: bad arguments, or no such weights.
        DownloadError, CorruptCheckpointError: the weights are not at hand and cannot be downloaded, or their
            file's hash does not match.

    Example::

        >>> m = create_model("resnet50", num_classes=20)
        >>> m(torch.randn(2, 3, 224, 224)).shape
        torch.Size([2, 20])
        >>> create_model("resnet50", weights="IMAGENET1K_V3")
        Traceback (most recent call last):
        ...
        torchsmith.errors.ModelConfigError: 'resnet50' has no weights 'IMAGENET1K_V3'. Did you mean 'IMAGENET1K_V2', 'IMAGENET1K_V1'? ...
    """
    builder = get_model_builder(name)
    asked = {k: v for k, v in zip(WEIGHTS_KEYWORDS, (pretrained, weights, weights_path)) if v is not None and v is not False}
    if not asked:
        return builder(**kwargs)
    params = inspect.signature(builder).parameters
    if any(k in params for k in WEIGHTS_KEYWORDS):  # the builder loads its own weights (a torchvision wrapper)
        return builder(**kwargs, **asked)
    if pretrained not in (True, False) or (pretrained and weights is not None):
        raise ModelConfigError(
            f"create_model({name!r}): pass pretrained=True (the default weights) or weights=TAG, not "
            f"pretrained={pretrained!r} with weights={weights!r}."
        )
    if not is_rebuilding():
        entry = get_weights(name, weights)  # an unknown tag fails before anything is built
        if entry.num_classes is not None and "num_classes" in params and "num_classes" not in kwargs:
            kwargs["num_classes"] = entry.num_classes  # torchvision's rule: the weights' classes unless asked
    model = builder(**kwargs)
    load_pretrained(model, name, weights, weights_path=weights_path)
    cfg = getattr(model, CONFIG_ATTR, None)
    if cfg is not None:
        cfg["kwargs"]["weights"] = model.pretrained_cfg["tag"]  # the tag, also for pretrained=True
    return model


def create_layer(name: str, **kwargs: Any) -> nn.Module:
    """Build the ``torch.nn`` layer ``name`` with keyword arguments, recording how (so it can be saved).

    Only layers on the allow-list (``torchsmith.codec.NN_LAYERS``: leaf layers whose arguments are plain
    values) are built. A layer made this way can be put into a model with ``replace_module`` and
    still be rebuilt by ``load_model``: its config is
    ``{"name": "torch.nn.<name>", "kwargs": ...}``.

    Raises:
        UnknownModelError: ``name`` is not on the allow-list (naming it, the closest allowed names and what
            to do instead).

    Example::

        >>> act = create_layer("GELU", approximate="tanh")
        >>> act, model_config(act)
        (GELU(approximate='tanh'), {'name': 'torch.nn.GELU', 'kwargs': {'approximate': 'tanh'}, 'steps': []})
        >>> create_layer("MultiheadAttention", embed_dim=8, num_heads=2)
        Traceback (most recent call last):
        ...
        torchsmith.errors.UnknownModelError: create_layer: torch.nn.MultiheadAttention is not on torchsmith's allow-list ...
    """
    try:
        cls = nn_layer(name)
    except UnknownModelError as e:
        raise UnknownModelError(f"create_layer: {e}") from None
    key = TORCH_NN + cls.__name__
    recorded = _bound_kwargs(cls, (), kwargs, name=key)
    layer = cls(**kwargs)
    set_config(layer, {"name": key, "kwargs": recorded})
    return layer


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching an ``fnmatch`` pattern (``"resnet*"``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


# configs


def model_config(model: nn.Module) -> dict[str, Any] | None:
    """A copy of ``{"name", "kwargs", "steps"}`` recorded when ``model`` was built through the registry, else None.

    ``steps`` lists the changes of structure torchsmith's surgery made since
    (``{"op": "replace_head", ...}``), in order.
    """
    cfg = getattr(model, CONFIG_ATTR, None)
    if cfg is None:
        return None
    return {"name": cfg["name"], "kwargs": dict(cfg["kwargs"]), "steps": copy.deepcopy(list(cfg.get("steps", [])))}


def update_config(model: nn.Module, *, kwargs: Mapping[str, Any] | None = None, step: Mapping[str, Any] | None = None) -> bool:
    """The one way to change a recorded config: set builder ``kwargs`` and/or append a surgery ``step``.

    Keywords are checked against the builder's signature first, so a config
    never holds a keyword its builder rejects. A step is a dict with an
    ``"op"`` name and JSON-able arguments. Returns False (changing nothing)
    when ``model`` has no recorded config.

    Raises:
        ModelConfigError: a keyword the builder does not take (naming those it does), or a step without ``"op"``.

    Example::

        >>> m = create_model("mlp")
        >>> update_config(m, kwargs={"num_clases": 3})
        Traceback (most recent call last):
        ...
        torchsmith.errors.ModelConfigError: mlp does not take num_clases. Did you mean 'num_classes'? ...
    """
    cfg = getattr(model, CONFIG_ATTR, None)
    if cfg is None:
        return False
    if kwargs:
        params = inspect.signature(get_model_builder(cfg["name"])).parameters
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepted = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = [k for k in kwargs if k not in accepted] if not open_ended else []
        if unknown:
            raise ModelConfigError(
                f"{cfg['name']} does not take {', '.join(unknown)}.{did_you_mean(unknown[0], accepted)} "
                f"It takes {accepted}."
            )
    if step is not None and not isinstance(step.get("op"), str):
        raise ModelConfigError(f"a recorded step needs an 'op' name, got {dict(step)!r}.")
    if kwargs:
        cfg["kwargs"].update(kwargs)
    if step is not None:
        cfg.setdefault("steps", []).append(copy.deepcopy(dict(step)))
    return True
