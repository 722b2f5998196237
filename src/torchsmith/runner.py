"""Run a model on shapes only: the meta device, falling back to a real no-grad pass.

Shared by :mod:`torchsmith.features` (``feature_info``) and
:mod:`torchsmith.surgery` (finding heads, widths and the first conv).

A probe leaves no trace on the model: every module's attributes (caches such
as torchvision's ``AnchorGenerator.cell_anchors``), parameters, buffers (values
too), hooks and ``training`` flags are as they were afterwards, whether the
probe succeeded or failed.

Example inputs (the ``example_inputs=`` keyword of every function that probes)
are given as: a tuple (positional arguments), a dict (keyword arguments), or
anything else (one positional argument: a tensor, a list of images ...).
Tensors of any dtype are kept as they are (token ids stay integers).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from .errors import SurgeryError, TorchsmithError

logger = logging.getLogger("torchsmith")

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

ExampleInputs = Any  # a tuple of positional args, a dict of keyword args, or one positional arg
Call = tuple[tuple, dict]  # (args, kwargs)

_TOKENS = 8  # sequence length of the guessed token-id input


@contextmanager
def modes_kept(model: nn.Module, *, training: bool | None = None) -> Iterator[nn.Module]:
    """Restore every submodule's ``training`` flag on exit, optionally setting one mode inside."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


@contextmanager
def untouched(model: nn.Module, *, values: bool = False) -> Iterator[nn.Module]:
    """Put every module's attributes back on exit: plain attributes, parameter / buffer / submodule
    slots, hook dicts, ``training``. With ``values=True`` buffer values are restored too (a real pass)."""
    saved = []
    for module in model.modules():
        state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in module.__dict__.items()}
        saved.append((module, state))
    buffers = [(b, b.clone()) for b in model.buffers()] if values else []
    try:
        yield model
    finally:
        for module, state in saved:
            current = module.__dict__
            for key in [k for k in current if k not in state]:
                del current[key]
            for key, value in state.items():
                now = current.get(key)
                if isinstance(value, dict) and isinstance(now, dict) and type(now) is type(value):
                    now.clear()  # in place: hook handles keep pointing at these dicts
                    now.update(value)
                else:
                    current[key] = value
        with torch.no_grad():
            for buffer, value in buffers:
                if buffer.shape == value.shape:
                    buffer.copy_(value)


def as_call(example_inputs: ExampleInputs) -> Call:
    """``example_inputs`` as ``(args, kwargs)``: a tuple is positional args, a dict keyword args, anything else one arg."""
    if isinstance(example_inputs, tuple):
        return example_inputs, {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    return (example_inputs,), {}


def describe(call: Call) -> str:
    """``(1, 3, 224, 224) float32`` style text for error messages."""

    def one(x: Any) -> str:
        if isinstance(x, Tensor):
            return f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}"
        if isinstance(x, (list, tuple)):
            return "[" + ", ".join(one(v) for v in x) + "]"
        return type(x).__name__

    args, kwargs = call
    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()])


def example_input(
    model: nn.Module, input_size: Sequence[int] | None = None, spatial: int = 224, *, error: type[TorchsmithError] = SurgeryError
) -> Tensor:
    """A meta input of ``input_size``, or one sample shaped (and typed) for the first input layer of ``model``.

    ``(1, C, 224, 224)`` for a Conv2d, ``(1, C, 224)`` for a Conv1d, ``(1, F)``
    for a Linear, ``(1, 8)`` token ids (int64) for an Embedding.

    Raises:
        SurgeryError: no ``input_size`` and no Conv / Linear / Embedding layer to guess it from.
    """
    if input_size:
        return torch.empty(*input_size, device="meta")
    for module in model.modules():
        if isinstance(module, CONV_TYPES):
            dims = 1 + CONV_TYPES.index(next(t for t in CONV_TYPES if isinstance(module, t)))
            return torch.empty(1, module.in_channels, *([spatial] * dims), dtype=module.weight.dtype, device="meta")
        if isinstance(module, nn.Linear):
            return torch.empty(1, module.in_features, dtype=module.weight.dtype, device="meta")
        if isinstance(module, nn.Embedding):
            return torch.zeros(1, _TOKENS, dtype=torch.long, device="meta")
    raise error(
        f"{type(model).__name__} has no Conv, Linear or Embedding layer to guess its input from; "
        "pass example_inputs=... (or input_size=(B, C, ...))."
    )


def example_call(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    example_inputs: ExampleInputs = None,
    *,
    error: type[TorchsmithError] = SurgeryError,
) -> Call:
    """``(args, kwargs)`` for one probe: ``example_inputs`` when given, else a guess (see :func:`example_input`)."""
    if example_inputs is not None:
        if input_size:
            raise error("pass input_size or example_inputs, not both.")
        return as_call(example_inputs)
    return (example_input(model, input_size, error=error),), {}


def _as_meta(model: nn.Module) -> dict[str, Tensor]:
    state = {n: t for n, t in model.named_parameters(remove_duplicate=False)}
    state.update(model.named_buffers(remove_duplicate=False))
    return {n: torch.empty_like(t, device="meta") if t is not None else None for n, t in state.items()}


def _to(call: Call, fn) -> Call:
    args, kwargs = call
    convert = lambda x: fn(x) if isinstance(x, Tensor) else x  # noqa: E731
    return tree_map(convert, args), tree_map(convert, kwargs)


def probe(
    model: nn.Module,
    call: Call,
    *,
    training: bool = False,
    meta_only: bool = False,
    error: type[TorchsmithError] = SurgeryError,
    purpose: str = "",
) -> Any:
    """``model(*args, **kwargs)`` on shapes only, in ``training`` mode, leaving ``model`` untouched.

    First on the meta device (no memory, no compute): parameters and buffers are
    swapped for meta tensors with ``torch.func.functional_call``. A model that
    cannot run on meta (``.item()``, tensors kept as plain attributes) runs for
    real under ``no_grad`` (inputs given on meta become zeros; buffers are put
    back afterwards). When both fail, ``error`` says what was tried and to pass
    ``example_inputs=``.
    """
    try:
        with torch.no_grad(), untouched(model), modes_kept(model, training=training):
            meta = _to(call, lambda x: torch.empty_like(x, device="meta"))
            return torch.func.functional_call(model, _as_meta(model), meta[0], meta[1], strict=False)
    except Exception as err:  # noqa: BLE001 - any failure on meta means "try for real"
        logger.debug("meta probe of %s failed (%s); probing for real", type(model).__name__, err)
        failure: Exception = err
    if not meta_only:
        ref = next(iter([*model.parameters(), *model.buffers()]), None)
        device = ref.device if ref is not None else torch.device("cpu")
        real = _to(call, lambda x: torch.zeros(x.shape, dtype=x.dtype, device=device) if x.is_meta else x)
        try:
            with torch.no_grad(), untouched(model, values=True), modes_kept(model, training=training):
                return model(*real[0], **real[1])
        except Exception as err:  # noqa: BLE001 - reported below with what to do
            failure = err
    raise error(
        f"cannot run {type(model).__name__} on ({describe(call)}){' to ' + purpose if purpose else ''}: "
        f"{type(failure).__name__}: {str(failure).strip().splitlines()[0].rstrip('.!') if str(failure).strip() else ''}. "
        "Pass example_inputs= with inputs its forward accepts (a tensor, a tuple of positional arguments "
        "or a dict of keyword arguments; token ids as integer tensors)."
    ) from failure


# outputs


def output_tensors(output: Any) -> list[Tensor]:
    """Every tensor in a model's output: a tensor, a dict (``ModelOutput``), a tuple (namedtuple) or list of them."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for v in output.values() for t in output_tensors(v)]
    if isinstance(output, (list, tuple)):
        return [t for v in output for t in output_tensors(v)]
    return []


def main_output(output: Any) -> Tensor | None:
    """The prediction in a model's output: the tensor itself, ``["logits"]`` / ``["out"]`` of a dict
    (transformers, torchvision segmentation), or the first element of a tuple (torchvision's aux outputs)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("logits", "out"):
            if isinstance(output.get(key), Tensor):
                return output[key]
        return None
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None
