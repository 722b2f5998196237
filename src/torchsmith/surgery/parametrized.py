"""Layers with parametrizations (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``,
``orthogonal``): their weight is computed from other tensors, so an edit takes the parametrizations off
first (:func:`unparametrized`: each tensor becomes a plain parameter holding its current value) and, where
the layer should keep them, puts them back (:func:`reparametrize`), checking that the value is kept.

``unparametrized`` and ``reparametrize`` change the module in place; neither touches the tensors the
parametrizations held before, so :func:`torchsmith.runner.restored_on_failure` can put everything back.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import SurgeryError

__all__ = ["original_class", "unparametrized", "reparametrize"]

Parametrizations = dict[str, list[nn.Module]]


def original_class(module: nn.Module) -> type[nn.Module]:
    """The class a parametrized module had before (torch makes a ``Parametrized<Name>`` subclass per instance)."""
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)


def unparametrized(module: nn.Module) -> Parametrizations:
    """Take every parametrization off ``module``, each tensor left as a plain parameter (or buffer) with its
    current value; returns ``{tensor name: its parametrizations, in order}`` (empty for a plain module)."""
    if not parametrize.is_parametrized(module):
        return {}
    lists = dict(module.parametrizations.items())
    values = {}
    for name, plist in lists.items():
        held = [*plist.named_parameters(recurse=False), *plist.named_buffers(recurse=False)]
        originals = [t for n, t in held if n.startswith("original")]  # `original`, or `original0`, `original1` ...
        with torch.no_grad():
            value = getattr(module, name).detach().clone()
        values[name] = (value, any(o.requires_grad for o in originals), isinstance(originals[0], nn.Parameter))
    module.__class__ = original_class(module)
    del module._modules["parametrizations"]
    for name, (value, grad, is_param) in values.items():
        if is_param:
            module._parameters[name] = nn.Parameter(value, requires_grad=grad)
        else:
            module._buffers[name] = value
    return {name: list(plist) for name, plist in lists.items()}


def reparametrize(module: nn.Module, parametrizations: Parametrizations, *, path: str, action: str) -> None:
    """Put ``parametrizations`` back on ``module``'s (edited) tensors, checking each keeps its value.

    Raises:
        SurgeryError: a parametrization that cannot hold the edited tensor (``spectral_norm`` divides it by
            its largest singular value, ``orthogonal`` makes it orthogonal), naming the layer.
    """
    for name, plist in parametrizations.items():
        target = getattr(module, name).detach().clone()
        kinds = ", ".join(type(p).__name__ for p in plist)
        try:
            for p in plist:
                parametrize.register_parametrization(module, name, p)
            with torch.no_grad():
                value = getattr(module, name)
            kept = target.is_meta or value.shape == target.shape and torch.allclose(
                value, target, rtol=1e-5, atol=1e-6 * float(target.abs().max()) if target.numel() else 0.0)
        except Exception as err:  # noqa: BLE001 - any parametrization that rejects the new tensor
            kept, why = False, f"{type(err).__name__}: {err}"
        else:
            why = "its value would change"
        if not kept:
            raise SurgeryError(
                f"{action}: {path!r} has the parametrization {kinds} on {name!r}, which cannot hold the edited "
                f"tensor ({why}). Take it off first with torch.nn.utils.parametrize.remove_parametrizations("
                f"module, {name!r}, leave_parametrized=True), then {action}."
            )
