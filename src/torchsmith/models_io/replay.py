"""Rebuild a model from its recorded config: the builder's keywords, then the surgery steps in order.

``model.torchsmith_config`` is ``{"name", "kwargs", "steps"}``: the
registered builder and its keywords, then one JSON step per change of
structure torchsmith made (``replace_head``, ``adapt_input_channels``,
``add_inputs``, ``freeze`` / ``unfreeze``, ``fold_batchnorm``,
``optimize_for_inference``, ``replace_module`` with a module built by
``create_model`` / ``create_layer`` or described as plain data by the config
codec). :func:`build_from_config` replays them, on the meta device by default (shapes only; ``load_model`` then assigns the
weights).

Example::

    >>> import torchsmith as ts
    >>> model = ts.replace_head(ts.create_model("resnet18"), 5)
    >>> ts.model_config(model)["steps"]
    [{'op': 'replace_head', 'num_classes': 5, 'path': 'fc'}]
    >>> rebuilt = build_from_config(ts.model_config(model))
    >>> rebuilt.fc, rebuilt.fc.weight.device
    (Linear(in_features=512, out_features=5, bias=True), device(type='meta'))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..codec import build_module
from ..errors import ModelConfigError, did_you_mean
from ..registry import create_model, update_config
from ..surgery import freeze, replace_head, replace_module, unfreeze
from ..surgery.channels import adapt_channels
from ..surgery.fold import fold_pairs, inference_ready
from ..surgery.heads import head_options
from ..surgery.inputs import wrap_inputs

__all__ = ["build_from_config", "replay_steps", "finish_loaded"]


def _optimized(model: nn.Module, step: Mapping[str, Any]) -> nn.Module:
    model.requires_grad_(False)  # eval mode and channels-last come after the weights (finish_loaded)
    update_config(model, step=step)
    return model


def replaced_module(step: Mapping[str, Any]) -> nn.Module:
    """The module a ``replace_module`` step puts in: rebuilt from its config (``module``), or from its
    plain-data description (``spec``, see ``torchsmith.codec.describe_module``)."""
    if "spec" in step:
        return build_module(step["spec"], path=str(step.get("path", "")))
    return build_from_config(step["module"], device=None)


_REPLAY: dict[str, Callable[[nn.Module, Mapping[str, Any]], nn.Module]] = {
    "replace_head": lambda m, s: replace_head(m, s["num_classes"], path=s["path"], **head_options(s)),
    "adapt_input_channels": lambda m, s: adapt_channels(m, s["in_chans"], s["path"]),
    "freeze": lambda m, s: freeze(m, s["patterns"], exclude=s["exclude"], bn=s["bn"]),
    "unfreeze": lambda m, s: unfreeze(m),
    "add_inputs": lambda m, s: wrap_inputs(m, dict(s)),
    "fold_batchnorm": lambda m, s: (fold_pairs(m, s["pairs"]), m)[1],
    "optimize_for_inference": _optimized,
    "replace_module": lambda m, s: replace_module(m, s["path"], replaced_module(s)),
}


def replay_steps(model: nn.Module, steps: list[Mapping[str, Any]]) -> nn.Module:
    """Apply recorded ``steps`` to ``model`` in order; returns the result (a wrapper after ``add_inputs``).

    Raises:
        ModelConfigError: a step this torchsmith does not know.
        SurgeryError: a step that does not fit the model (a hand-edited config).
    """
    for i, step in enumerate(steps):
        op = step.get("op") if isinstance(step, Mapping) else None
        if op not in _REPLAY:
            raise ModelConfigError(
                f"step {i} is {step!r}: not a recorded torchsmith operation.{did_you_mean(str(op), _REPLAY)} "
                f"Known: {', '.join(_REPLAY)}."
            )
        model = _REPLAY[op](model, step)
    return model


def build_from_config(config: Mapping[str, Any], *, device: str | torch.device | None = "meta") -> nn.Module:
    """Build ``config["name"]`` with its keywords and replay its steps, on ``device`` (None: the current default).

    The result records the same config, so it can be saved again.
    """
    if device is None:
        model = create_model(config["name"], **config["kwargs"])
        return replay_steps(model, list(config.get("steps", [])))
    with torch.device(device):
        return build_from_config(config, device=None)


def finish_loaded(model: nn.Module, steps: list[Mapping[str, Any]]) -> nn.Module:
    """What steps do to a model after its weights are in: ``optimize_for_inference``'s eval mode and channels-last."""
    for step in steps:
        if step.get("op") == "optimize_for_inference":
            inference_ready(model, channels_last=bool(step.get("channels_last")))
    return model
