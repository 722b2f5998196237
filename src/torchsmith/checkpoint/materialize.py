"""Tensors a checkpoint cannot fill: finding what is left on the meta device, recomputing what the model can.

A model built under ``torch.device("meta")`` has every tensor on meta, also the
ones no checkpoint holds: non-persistent buffers (BERT's ``position_ids``, GPT-2's
causal mask) and tensors kept in plain attributes (a list of anchor cells).
:func:`meta_tensors` names them all; :func:`recompute` builds the model a second
time with only its parameters on meta (no weight memory, no init cost) and takes
those tensors from it, when something says how the model was built: a transformers ``config`` (known
here), or what a higher layer registers with :func:`register_rebuilder` (a torchsmith registry config,
its surgery steps replayed: :mod:`torchsmith.models_io`). Only :func:`put` changes its argument (it
assigns a tensor returned by :func:`recompute`); the others return new objects.

    >>> class Positions(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.embed = nn.Embedding(4, 2)
    ...         self.register_buffer("ids", torch.arange(4), persistent=False)  # (4,)
    >>> with torch.device("meta"):
    ...     m = Positions()
    >>> sorted(meta_tensors(m)), sorted(meta_tensors(m, persistent=False))
    (['embed.weight', 'ids'], ['ids'])
    >>> recompute(m, ["ids"])  # neither registry-built nor a transformers model: nothing says how to rebuild
    {}

Built through the registry (``create_model`` or a registered builder), the same call returns
``{'ids': tensor([0, 1, 2, 3])}``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["all_tensors", "meta_tensors", "recompute", "put", "register_rebuilder"]

log = logging.getLogger(__name__)


# finding


def _attribute_tensors(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors held in plain attributes, alone or in a list / tuple (``cell_anchors.0``)."""
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            yield attr, value
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, torch.Tensor):
                    yield f"{attr}.{i}", v


def all_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` by path: parameters, buffers (persistent or not), tensors in plain attributes."""
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        dot = f"{path}." if path else ""
        for table in (module._parameters, module._buffers):
            for name, t in table.items():
                if t is not None:
                    out.setdefault(dot + name, t)
        for name, t in _attribute_tensors(module):
            out.setdefault(dot + name, t)
    return out


def meta_tensors(model: nn.Module, *, persistent: bool | None = None) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` on the meta device, by path.

    ``persistent=False`` keeps those no state dict holds (non-persistent buffers, attribute
    tensors); ``True`` only state-dict entries; ``None`` all.
    """
    found = {k: t for k, t in all_tensors(model).items() if t.is_meta}
    if persistent is None:
        return found
    in_state = set(model.state_dict(keep_vars=True))
    return {k: t for k, t in found.items() if (k in in_state) == persistent}


# recomputing


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Build modules with every parameter moved to meta as it is registered; buffers stay real."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        p = module._parameters.get(name)
        if p is not None and not p.is_meta:
            module._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


Rebuilder = Callable[[nn.Module], "tuple[str, Callable[[], nn.Module]] | None"]
_REBUILDERS: list[Rebuilder] = []


def register_rebuilder(fn: Rebuilder) -> Rebuilder:
    """Add a way to build a model again: ``fn(model)`` returns ``(description, build)`` or None when it
    does not know ``model``. Layers above this package register theirs (the registry config's replay,
    in :mod:`torchsmith.models_io`), so file I/O imports no model code."""
    if fn not in _REBUILDERS:
        _REBUILDERS.append(fn)
    return fn


@register_rebuilder
def _transformers_rebuild(model: nn.Module) -> tuple[str, Callable[[], nn.Module]] | None:
    """transformers' ``PreTrainedModel``: its class and a copy of its ``config``."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(type(model), "config_class"):
        return f"{type(model).__name__}(config)", lambda: type(model)(copy.deepcopy(config))
    return None


def _builder(model: nn.Module) -> tuple[str, Callable[[], nn.Module]] | None:
    """How to build ``model`` again, and its description; None when no registered rebuilder knows it
    (the most recently registered is asked first)."""
    for rebuild in reversed(_REBUILDERS):
        how = rebuild(model)
        if how is not None:
            return how
    return None


def recompute(model: nn.Module, names: list[str], *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Real values for the meta tensors ``names`` of ``model``, from a second build with parameters on meta.

    Returns the ones found (same shape; cast to the meta tensor's dtype, on ``device``); empty when the
    model cannot be rebuilt or the build fails. The random state is left as it was.
    """
    how = _builder(model)
    if how is None or not names:
        return {}
    label, build = how
    try:
        with torch.random.fork_rng(devices=[]), _parameters_on_meta(), torch.device("cpu"):
            fresh = build()
    except Exception as e:  # the model's own code: whatever it raises, the tensors stay unknown
        log.debug("recomputing %s by %s failed: %s: %s", names, label, type(e).__name__, e)
        return {}
    theirs = all_tensors(fresh)
    ours = all_tensors(model)
    out = {}
    for name in names:
        t = theirs.get(name)
        if t is not None and not t.is_meta and t.shape == ours[name].shape:
            out[name] = t.detach().to(device=device, dtype=ours[name].dtype)
    return out


def put(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set the buffer or attribute tensor at path ``name`` (``"a.b.cell_anchors.0"``) to ``value``."""
    path, _, attr = name.rpartition(".")
    if attr.isdigit():  # an element of a list / tuple attribute
        owner_path, _, seq_attr = path.rpartition(".")
        owner = model.get_submodule(owner_path)
        seq = getattr(owner, seq_attr)
        if isinstance(seq, list):
            seq[int(attr)] = value
        else:
            object.__setattr__(owner, seq_attr, tuple(value if i == int(attr) else v for i, v in enumerate(seq)))
        return
    owner = model.get_submodule(path)
    if attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        object.__setattr__(owner, attr, value)
