"""Finding and replacing submodules, and what every surgery operation shares: paths, the reference tensor
a new layer follows, and the attributes (``num_classes``, ``in_chans``) kept true. Steps are recorded through
:mod:`torchsmith.steps`, where each operation registers its replay.

``replace_module`` changes the model in place and returns it; the helpers change nothing but ``put``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from ..codec import build_module, describe_module
from ..errors import SurgeryError, did_you_mean
from ..paths import inner_path, module_paths, unwrapped
from ..registry import model_config
from ..runner import restored_on_failure
from ..steps import build_from_config, record, recorded_op
from .check import check_runs, checking_call

__all__ = ["get_module", "replace_module"]


# helpers


def first_tensor(*modules: nn.Module) -> Tensor | None:
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            return tensor
    return None


def find_path(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise SurgeryError(f"{type(target).__name__} is not a submodule of {type(model).__name__}.")


def update_attrs(model: nn.Module, **kwargs: int) -> None:
    """Keep the ``num_classes`` / ``in_chans`` attributes true after surgery (the recorded config gets a step)."""
    for key, value in kwargs.items():
        if isinstance(getattr(model, key, None), int):
            setattr(model, key, value)


# find and replace


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``""`` is the model itself), by any name it is registered under.

    On a ``torch.compile``d model the path is inside the model it compiles,
    with or without the wrapper's ``_orig_mod.`` prefix (as every surgery path).

    Example::

        >>> get_module(create_model("resnet50"), "layer3.1.conv2")
        Conv2d(256, 256, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """
    inner = unwrapped(model)
    try:
        return inner.get_submodule(inner_path(path))
    except AttributeError as err:
        raise SurgeryError(f"{type(inner).__name__} has no module {path!r}.{did_you_mean(path, module_paths(inner))}") from err


def _replay_replace_module(model: nn.Module, step) -> nn.Module:
    """The module of a step rebuilt from its config (``module``) or its plain-data description (``spec``)."""
    if "spec" in step:
        return put_recorded(model, step["path"], build_module(step["spec"], path=str(step["path"])))
    return put_recorded(model, step["path"], build_from_config(step["module"], device=None))


@recorded_op("replace_module", replay=_replay_replace_module)
def replace_module(
    model: nn.Module,
    path: str,
    new: nn.Module,
    *,
    check: bool = True,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Put ``new`` at ``path``, moved to the device (and floating dtype) of what it replaces; returns ``model``.

    ``new`` is recorded for ``save_model`` when torchsmith can describe it
    without pickle: built with ``create_model`` or ``create_layer`` (recorded
    as ``module``, its config), or made only of torch.nn layers on the
    allow-list inside ``Sequential`` / ``ModuleList`` / ``ModuleDict``
    (recorded as ``spec``, its description by the config codec). Any other
    module works the same in memory, and ``save_model`` refuses the model,
    naming the path and why.

    Afterwards the model is run once on ``example_inputs`` / ``input_size``
    (else a guessed input that ran it before; with none, the change is not
    checked): if it no longer runs, it is restored and :class:`SurgeryError`
    names the layer that fails. ``check=False`` skips that run, for one step
    of several that only fit together (a conv's width, then the next layer's).

    Example::

        >>> model = replace_module(create_model("resnet18"), "layer1.0.relu", nn.GELU())
        >>> type(model.layer1[0].relu).__name__, model_config(model)["steps"]
        ('GELU', [{'op': 'replace_module', 'path': 'layer1.0.relu', 'spec': 'GELU'}])
    """
    inner = unwrapped(model)
    call = checking_call(inner, input_size=input_size, example_inputs=example_inputs, action="replace_module") if check else None
    with restored_on_failure(inner):
        put_recorded(inner, inner_path(path), new)
        check_runs(inner, call, action=f"replace_module at {path!r}")
    return model


def put_recorded(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """:func:`put`, recorded when the module can be described (the structure of :func:`replace_module`,
    replayed by ``load_model``); returns ``model``."""
    put(model, path, new)
    if model_config(model) is None:
        return model  # nothing records: no need to describe
    described = model_config(new)
    if described is not None:
        record(model, "replace_module", path=path, module=described)
    elif not _shares_tensors(model, path):
        spec, _ = describe_module(get_module(model, path), path=path)
        if spec is not None:
            record(model, "replace_module", path=path, spec=spec)
    return model


def _shares_tensors(model: nn.Module, path: str) -> bool:
    """Whether the module at ``path`` holds a parameter or buffer the rest of ``model`` uses too (a description
    would rebuild it untied)."""
    inside = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    mine = {id(t) for name, t in inside if name.startswith(path + ".")}
    return any(id(t) in mine for name, t in inside if not name.startswith(path + "."))


def put(model: nn.Module, path: str, new: nn.Module) -> None:
    """``replace_module`` without recording (for the operations that record themselves)."""
    if not path:
        raise SurgeryError("replace_module needs a submodule path; the root cannot replace itself.")
    old = get_module(model, path)
    parent_path, _, name = path.rpartition(".")
    parent = get_module(model, parent_path)
    ref = first_tensor(old, model)
    if ref is not None:
        new = new.to(device=ref.device)
        if ref.is_floating_point():
            new = new.to(dtype=ref.dtype)  # only floating tensors change dtype
    setattr(parent, name, new)
