"""Run a model on shapes only: the meta device, falling back to a real no-grad pass.

Shared by :mod:`torchsmith.features` (``feature_info``) and
:mod:`torchsmith.surgery` (finding heads, widths and the first conv).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .errors import SurgeryError

logger = logging.getLogger("torchsmith")

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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


def example_input(model: nn.Module, input_size: Sequence[int] | None = None, spatial: int = 224) -> Tensor:
    """A meta input of ``input_size``, or one sample shaped (and typed) for the first conv / linear layer of ``model``.

    ``(1, C, 224, 224)`` for a Conv2d, ``(1, C, 224)`` for a Conv1d, ``(1, F)`` for a Linear.

    Raises:
        SurgeryError: no ``input_size`` and no Conv / Linear layer to guess it from.
    """
    if input_size:
        return torch.empty(*input_size, device="meta")
    for module in model.modules():
        if isinstance(module, CONV_TYPES):
            dims = 1 + CONV_TYPES.index(next(t for t in CONV_TYPES if isinstance(module, t)))
            return torch.empty(1, module.in_channels, *([spatial] * dims), dtype=module.weight.dtype, device="meta")
        if isinstance(module, nn.Linear):
            return torch.empty(1, module.in_features, dtype=module.weight.dtype, device="meta")
    raise SurgeryError(
        f"{type(model).__name__} has no Conv or Linear layer to guess its input shape from; pass input_size=(B, C, ...)."
    )


def _as_meta(model: nn.Module) -> dict[str, Tensor]:
    state = {n: t for n, t in model.named_parameters(remove_duplicate=False)}
    state.update(model.named_buffers(remove_duplicate=False))
    return {n: torch.empty_like(t, device="meta") if t is not None else None for n, t in state.items()}


def probe(model: nn.Module, *inputs: Tensor) -> Any:
    """``model(*inputs)`` on shapes only, leaving ``model`` untouched.

    First on the meta device (no memory, no compute): parameters and buffers are
    swapped for meta tensors with ``torch.func.functional_call``. A model that
    cannot run on meta (``.item()``, tensors kept as plain attributes) runs for
    real on zeros, in eval mode, under ``no_grad``; its modes are restored.
    """
    try:
        meta_inputs = tuple(torch.empty_like(x, device="meta") for x in inputs)
        with torch.no_grad():
            return torch.func.functional_call(model, _as_meta(model), meta_inputs, strict=False)
    except Exception as err:  # noqa: BLE001 - any failure on meta means "try for real"
        logger.debug("meta probe of %s failed (%s); probing with zeros", type(model).__name__, err)
    ref = next(iter([*model.parameters(), *model.buffers()]), None)
    device = ref.device if ref is not None else torch.device("cpu")
    real_inputs = [torch.zeros(x.shape, dtype=x.dtype, device=device) for x in inputs]
    with torch.no_grad(), modes_kept(model, training=False):
        return model(*real_inputs)
