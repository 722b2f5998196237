"""Heads: finding a model's classifier (``get_classifier``, or a shape-only probe) and replacing it.

``replace_head`` changes the model in place and returns it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..runner import CONV_TYPES, Call, example_call, main_output, output_tensors, probe, refuse_uninitialised
from ..errors import HeadNotFoundError, SurgeryError, TorchsmithError
from ..steps import record, recorded_op
from .modules import find_path, get_module, put, update_attrs

__all__ = ["replace_head"]

logger = logging.getLogger("torchsmith")


def is_head_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or isinstance(module, CONV_TYPES) and all(k == 1 for k in module.kernel_size)


@contextmanager
def recording(model: nn.Module, keep) -> Iterator[list[tuple[str, Any, Any]]]:
    """Forward hooks on every module ``keep`` accepts, recording ``(path, inputs, output)``; removed on exit."""
    seen: list[tuple[str, Any, Any]] = []
    handles = [m.register_forward_hook(lambda m, i, o, p=p: seen.append((p, i, o))) for p, m in model.named_modules() if keep(m)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _producer(seen: list[tuple[str, Any, Any]], target: Tensor) -> list[str]:
    """Recorded layers whose output is ``target``: the very tensor, else the only ones of its shape."""
    exact = list(dict.fromkeys(p for p, _, o in seen if o is target))
    if len(exact) == 1:
        return exact
    return list(dict.fromkeys(p for p, _, o in seen if isinstance(o, Tensor) and o.shape == target.shape))


def find_head(model: nn.Module, call: Call | None) -> str:
    """Our models and timm's name it (``get_classifier``); otherwise a probe finds the last Linear / 1x1 conv
    whose output is the model's prediction (its output, or ``logits`` / ``out`` / the first of a tuple).

    Raises:
        HeadNotFoundError: no such layer, or several (listing them).
        SurgeryError: the probe cannot run, or the output holds no prediction.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        return find_path(model, get_classifier())
    call = call if call is not None else example_call(model, error=SurgeryError)
    with recording(model, is_head_layer) as seen:
        y = probe(model, call, error=SurgeryError, purpose="find its classifier")
    main = main_output(y)
    if main is None:
        raise SurgeryError(
            f"{type(model).__name__} returns {type(y).__name__}, with no tensor, 'logits' or 'out' to call its "
            "prediction; pass path='...' to name the head."
        )
    candidates = _producer(seen, main)
    if len(candidates) != 1:
        found = ", ".join(f"{p} -> {tuple(o.shape)}" for p, _, o in seen if isinstance(o, Tensor)) or "none"
        raise HeadNotFoundError(
            f"cannot tell the classifier of {type(model).__name__} (output {tuple(main.shape)}): "
            f"{'candidates ' + ', '.join(candidates) if candidates else 'no Linear / 1x1 conv gives that shape'}; "
            f"layers seen: {found}. Pass path='...'."
        )
    return candidates[0]


def _aux_heads(model: nn.Module, call: Call | None, head: str) -> tuple[list[str], list[str]]:
    """Classifier layers that only the train-mode forward returns (inception's ``AuxLogits.fc``, googlenet's
    ``aux1.fc2``) with as many outputs as ``head``; and the train-only outputs of that width no layer explains."""
    width = out_features(get_module(model, head))
    args, kwargs = call if call is not None else example_call(model, error=SurgeryError)
    twice = lambda x: torch.cat([x, x]) if isinstance(x, Tensor) and x.dim() else x  # noqa: E731 - train-mode BatchNorm needs 2 samples
    call = tuple(twice(a) for a in args), {k: twice(v) for k, v in kwargs.items()}
    try:
        with recording(model, is_head_layer) as seen:
            y = probe(model, call, training=True, allow_real=False, error=SurgeryError)
    except TorchsmithError as err:  # no train-mode pass on meta or fake: nothing to say about aux heads
        logger.debug("no train-mode probe of %s (%s)", type(model).__name__, err)
        return [], []
    heads, left = [], []
    for i, t in enumerate(output_tensors(y)):
        if t.dim() < 2 or t.shape[1] != width:
            continue
        producers = _producer(seen, t)
        if producers == [head]:
            continue  # the main prediction
        others = [p for p in producers if p != head]
        if len(others) == 1 and out_features(get_module(model, others[0])) == width:
            heads.append(others[0])
        else:
            left.append(f"output {i} {tuple(t.shape)}")
    return list(dict.fromkeys(heads)), left


def out_features(layer: nn.Module) -> int | None:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, CONV_TYPES):
        return layer.out_channels
    return None


def _new_head(model: nn.Module, path: str, old: nn.Module, num_classes: int) -> nn.Module:
    """A fresh layer like ``old`` (every constructor setting) with ``num_classes`` outputs."""
    if num_classes == 0:
        return nn.Identity()
    if isinstance(old, nn.Linear):
        return nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    if isinstance(old, CONV_TYPES):
        if num_classes % old.groups:
            raise SurgeryError(
                f"the head {path!r} is {old} with groups={old.groups}; {num_classes} outputs do not split into "
                f"{old.groups} groups. Ask for a multiple of {old.groups}, or replace it with replace_module."
            )
        return type(old)(
            old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride, padding=old.padding,
            dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        )  # fmt: skip
    if isinstance(old, nn.Identity) and isinstance(getattr(model, "num_features", None), int):
        return nn.Linear(model.num_features, num_classes)
    raise SurgeryError(f"the head {path!r} is a {type(old).__name__}; replace_head handles Linear, conv and Identity heads.")


@recorded_op("replace_head", replay=lambda model, step: replace_head(model, step["num_classes"], path=step["path"]))
def replace_head(
    model: nn.Module,
    num_classes: int,
    *,
    path: str | None = None,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Swap the classifier for a freshly initialised one with ``num_classes`` outputs; returns ``model``.

    The classifier is ``path`` when given, else ``model.get_classifier()``
    where the model has one (ours, timm's), else the last Linear / 1x1 conv
    whose output is the model's prediction, found by a shape-only probe on
    ``input_size`` / ``example_inputs`` (a tensor, a tuple of positional
    arguments or a dict of keyword arguments: token ids for BERT), or on a
    guessed ``(1, C, 224, 224)``. A head found by the probe brings the
    auxiliary heads the train-mode forward returns with it (inception_v3's
    ``AuxLogits.fc``, googlenet's ``aux1.fc2`` / ``aux2.fc2``): all are
    replaced; train-only outputs of the old width that no layer explains are
    named in a warning. Every setting of the old layer is kept (bias; a conv's
    kernel, stride, padding, dilation, groups, padding mode), and its device
    and dtype; ``num_classes=0`` puts an ``nn.Identity`` (pooled features).
    ``model.num_classes`` follows.

    Example::

        >>> model = replace_head(create_model("resnet50"), 20)
        >>> model.fc, model.num_classes
        (Linear(in_features=2048, out_features=20, bias=True), 20)
    """
    if num_classes < 0:
        raise SurgeryError(f"num_classes must be >= 0, got {num_classes}.")
    refuse_uninitialised(model, error=SurgeryError, action="replace its head")
    call = None
    if input_size or example_inputs is not None:
        call = example_call(model, input_size=input_size or None, example_inputs=example_inputs, error=SurgeryError)
    aux: list[str] = []
    if path is None:
        path = find_head(model, call)
        if not callable(getattr(model, "get_classifier", None)):
            aux, left = _aux_heads(model, call, path)
            if left:
                warnings.warn(
                    f"replace_head({type(model).__name__}, {num_classes}) changed {[path, *aux]}, but train-mode "
                    f"outputs {left} keep the old width and come from no Linear / 1x1 conv; change them with replace_module.",
                    stacklevel=2,
                )
    new = {p: _new_head(model, p, get_module(model, p), num_classes) for p in [path, *aux]}
    for p, layer in new.items():
        put(model, p, layer)
    update_attrs(model, num_classes=num_classes)
    for p in new:
        record(model, "replace_head", num_classes=num_classes, path=p)
    return model
