"""Module paths: the dotted names surgery, feature extraction and ``save_model`` resolve, the same with or
without ``torch.compile`` and for a module registered under two names.

A ``torch.compile``d model (an ``OptimizedModule``) is worked on through the model it wraps
(:func:`unwrapped`), and a path may carry the wrapper's ``_orig_mod.`` prefix or not (:func:`inner_path`).
``named_modules()`` lists a module registered twice under its first name only; :func:`module_paths` lists
every name, so each one that ``get_submodule`` accepts is accepted. Nothing here changes a model.

    >>> shared = nn.Linear(2, 2)
    >>> model = nn.ModuleDict({"enc": shared, "dec": shared})
    >>> module_paths(model), canonical_path(model, "dec")
    (['enc', 'dec'], 'enc')
    >>> inner_path("_orig_mod.layer1.0")
    'layer1.0'
"""

from __future__ import annotations

from torch import nn

__all__ = ["COMPILED_PREFIX", "unwrapped", "inner_path", "module_paths", "canonical_path"]

COMPILED_PREFIX = "_orig_mod."  # torch.compile's OptimizedModule holds the model it compiles as `_orig_mod`


def unwrapped(model: nn.Module) -> nn.Module:
    """The model a ``torch.compile`` wrapper (``OptimizedModule``) compiles, else ``model`` itself."""
    while type(model).__name__ == "OptimizedModule" and isinstance(model._modules.get("_orig_mod"), nn.Module):
        model = model._modules["_orig_mod"]
    return model


def inner_path(path: str) -> str:
    """``path`` inside the compiled model: without the ``_orig_mod.`` prefix(es) of its wrapper."""
    while path.startswith(COMPILED_PREFIX) or path == COMPILED_PREFIX[:-1]:
        path = path[len(COMPILED_PREFIX):]
    return path


def module_paths(model: nn.Module) -> list[str]:
    """Every dotted path of every submodule, in model order: a module registered under two names under both."""
    return [name for name, _ in model.named_modules(remove_duplicate=False) if name]


def canonical_path(model: nn.Module, path: str) -> str:
    """The path torch.fx and ``named_modules()`` name the module at ``path`` by (its first name; ``""`` for
    the model). A tail that names no module (a function node, ``dec.add``) is kept after its module's path."""
    parts = inner_path(path).split(".") if path else []
    first = {id(m): name for name, m in reversed(list(model.named_modules(remove_duplicate=False)))}
    for i in range(len(parts), 0, -1):
        try:
            module = model.get_submodule(".".join(parts[:i]))
        except AttributeError:
            continue
        return ".".join(p for p in [first.get(id(module), ".".join(parts[:i])), *parts[i:]] if p)
    return ".".join(parts)
