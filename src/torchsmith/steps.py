"""Recorded steps: the one table of operations that change a model's structure, and their replay.

A model built through the registry carries ``model.torchsmith_config = {"name", "kwargs", "steps"}``. Each
operation that changes its structure appends one JSON step with :func:`record`
(``{"op": "replace_head", "num_classes": 10, "path": "fc"}``) and registers itself once, where it is defined,
with :func:`recorded_op`: its name, its ``replay(model, step) -> model`` (run by ``load_model`` on the meta
device, before the weights are read; it records the step again) and its optional ``after_load(model, step)``
(run once the weights are in). :func:`replay_steps` and :func:`finish_loaded` are loops over that table.

Surgery registers its operations when it is imported, and ``import torchsmith`` (any ``torchsmith.*`` import)
imports it, so the table is whole before any step is replayed; the zoo's ``reset_classifier`` records
``replace_head`` through :func:`record` too. A step whose op is not in the table is refused when replayed.

``record`` changes the model's config in place; a replay changes the model in place and returns it (or a
wrapper: ``add_inputs``); ``build_from_config`` returns a new model.

Example::

    >>> model = build_from_config({"name": "resnet18", "kwargs": {}, "steps": [
    ...     {"op": "replace_head", "num_classes": 5, "path": "fc"}]})
    >>> model.fc, model.fc.weight.device, model_config(model)["steps"]
    (Linear(in_features=512, out_features=5, bias=True), device(type='meta'), [{'op': 'replace_head', 'num_classes': 5, 'path': 'fc'}])
    >>> sorted(recorded_ops())[:3]
    ['adapt_input_channels', 'add_inputs', 'fold_batchnorm']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from .errors import DuplicateModelError, ModelConfigError, did_you_mean
from .pretrained import rebuilding
from .registry import create_model, update_config

__all__ = ["RecordedOp", "recorded_op", "recorded_ops", "record", "replay_steps", "finish_loaded", "build_from_config"]

F = TypeVar("F", bound=Callable[..., Any])
Replay = Callable[[nn.Module, Mapping[str, Any]], nn.Module]
AfterLoad = Callable[[nn.Module, Mapping[str, Any]], None]


@dataclass(frozen=True)
class RecordedOp:
    """One recorded operation: its step name, how to replay a step, and what to do once weights are loaded."""

    name: str
    replay: Replay  # (model, step) -> model, structure only (meta device); records the step again
    after_load: AfterLoad | None  # (model, step) -> None, once the weights are in (eval mode, memory format)
    defined_by: str  # "module.function" that registered it (named when a second registration is refused)


_OPS: dict[str, RecordedOp] = {}


# the table


def recorded_op(name: str, *, replay: Replay, after_load: AfterLoad | None = None) -> Callable[[F], F]:
    """Register the operation ``name`` (the step's ``"op"``) on the function that performs it; returns it unchanged.

    ``replay(model, step)`` rebuilds the change from a recorded ``step`` on
    any device (meta included: no weights are read, none are needed) and
    records the step again, so the rebuilt model can be saved in turn;
    ``after_load(model, step)`` runs once the weights are loaded.

    Raises:
        DuplicateModelError: ``name`` is registered already (naming by which function).

    Example (an operation of your own; torchsmith's register the same way, in their surgery module)::

        >>> @recorded_op("set_dropout", replay=lambda model, step: set_dropout(model, step["p"]))
        ... def set_dropout(model, p):
        ...     for m in model.modules():
        ...         if isinstance(m, nn.Dropout):
        ...             m.p = p
        ...     record(model, "set_dropout", p=p)
        ...     return model
        >>> model = set_dropout(create_model("mlp", dropout=0.5), 0.1)
        >>> model_config(model)["steps"]
        [{'op': 'set_dropout', 'p': 0.1}]
        >>> build_from_config(model_config(model)).features[2].p      # what load_model rebuilds
        0.1
        >>> recorded_ops()["replace_head"].defined_by
        'torchsmith.surgery.heads.replace_head'
    """

    def wrap(fn: F) -> F:
        defined_by = f"{fn.__module__}.{fn.__qualname__}"
        if name in _OPS:
            raise DuplicateModelError(
                f"recorded_op: the operation {name!r} is already registered by {_OPS[name].defined_by}; "
                f"{defined_by} needs another name."
            )
        _OPS[name] = RecordedOp(name, replay, after_load, defined_by)
        return fn

    return wrap


def recorded_ops() -> dict[str, RecordedOp]:
    """A copy of the table: op name -> :class:`RecordedOp`, in registration order."""
    return dict(_OPS)


def record(model: nn.Module, op: str, **args: Any) -> None:
    """Append the step ``{"op": op, **args}`` to a registry-built model's config (nothing for any other model).

    ``args`` are JSON-able values (``save_model`` writes them); ``op`` names an operation registered with
    :func:`recorded_op` (checked when the step is replayed).
    """
    update_config(model, step={"op": op, **args})


# replay


def _op(i: int, step: Any) -> RecordedOp:
    op = step.get("op") if isinstance(step, Mapping) else None
    if op not in _OPS:
        raise ModelConfigError(
            f"step {i} is {step!r}: not a recorded torchsmith operation.{did_you_mean(str(op), _OPS)} "
            f"Known: {', '.join(_OPS)}."
        )
    return _OPS[op]


def replay_steps(model: nn.Module, steps: list[Mapping[str, Any]]) -> nn.Module:
    """Apply recorded ``steps`` to ``model`` in order; returns the result (a wrapper after ``add_inputs``).

    Raises:
        ModelConfigError: a step this torchsmith does not know (naming the closest known ops).
        SurgeryError: a step that does not fit the model (a hand-edited config).
    """
    for i, step in enumerate(steps):
        model = _op(i, step).replay(model, step)
    return model


def finish_loaded(model: nn.Module, steps: list[Mapping[str, Any]]) -> nn.Module:
    """Run the after-load action of each step that has one (``optimize_for_inference``: eval mode and
    channels-last), in order, on a model whose weights are in; returns ``model``."""
    for i, step in enumerate(steps):
        after_load = _op(i, step).after_load
        if after_load is not None:
            after_load(model, step)
    return model


def build_from_config(config: Mapping[str, Any], *, device: str | torch.device | None = "meta") -> nn.Module:
    """Build ``config["name"]`` with its keywords and replay its steps, on ``device`` (None: the current default).

    The result records the same config, so it can be saved again. Weights the config names (``weights``,
    ``backbone_weights``) are recorded, not read: a config rebuilds a structure, and ``load_model`` reads the
    weights from the file saved with it (so a rebuild needs no network).
    """
    if device is None:
        with rebuilding():
            model = create_model(config["name"], **config["kwargs"])
            return replay_steps(model, list(config.get("steps", [])))
    with torch.device(device):
        return build_from_config(config, device=None)
