"""Input channels: making the first conv take another number of channels, keeping what it computes.

``adapt_input_channels`` changes the model in place and returns it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..runner import CONV_TYPES, Call, example_call, probe
from ..errors import SurgeryError
from ..steps import record, recorded_op
from .modules import get_module, update_attrs

__all__ = ["adapt_input_channels"]



def _first_conv(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, CONV_TYPES):
            return name
    raise SurgeryError(f"{type(model).__name__} has no Conv1d/2d/3d layer; pass path= to name the input layer.")


def _check_takes_the_input(model: nn.Module, path: str, call: Call) -> None:
    """Refuse a conv whose input is not the model's input as given (inception_v3's ``transform_input``
    mixes channels, detectors normalise per channel): changing its channels cannot keep the model equivalent."""
    given: list[Any] = []
    received: list[Any] = []
    conv = model.get_submodule(path)
    handles = [
        model.register_forward_pre_hook(lambda m, args, kwargs: given.extend([*args, *kwargs.values()]), with_kwargs=True),
        conv.register_forward_pre_hook(lambda m, args: received.append(args[0])),
    ]
    try:
        probe(model, call, error=SurgeryError, purpose=f"check that {path!r} reads its input")
    finally:
        for handle in handles:
            handle.remove()
    if not received:
        raise SurgeryError(f"{type(model).__name__}'s forward never calls {path!r}; pass path= to name the input conv.")
    if not any(received[0] is x for x in given):
        raise SurgeryError(
            f"{type(model).__name__}'s forward changes its input before {path!r} (e.g. inception_v3's transform_input "
            "indexes the RGB channels, detectors normalise each channel): adapting that conv's channels would not "
            "keep the model equivalent, or would break its forward. Turn that step off (transform_input=False) "
            "or adapt the model's input handling yourself, then call adapt_input_channels."
        )


@recorded_op("adapt_input_channels", replay=lambda model, step: adapt_channels(model, step["in_chans"], step["path"]))
def adapt_input_channels(
    model: nn.Module,
    in_chans: int,
    *,
    path: str | None = None,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Make the first conv (or ``path``) take ``in_chans`` channels, keeping what it computes; returns ``model``.

    From ``C`` to ``N = in_chans`` channels. The equivalence that holds, for any ``C`` and ``N``:
    an input ``x`` with ``N`` channels and one ``x'`` with ``C`` channels give equal outputs when
    channels whose indices are equal modulo ``min(C, N)`` are equal. In words:

    - ``N <= C`` (fewer): old channel ``c`` folds onto ``c % N``: the model on ``x`` equals the original
      on ``x`` tiled to ``C`` channels, ``x[:, arange(C) % N]`` (3 -> 1: a gray image ``g`` gives the
      original's output on ``(g, g, g)``);
    - ``N > C`` (more): new channel ``j`` gets ``w[:, j % C]`` divided by how many new channels repeat
      that old channel, so the original on ``x`` equals the model on ``x`` tiled to ``N`` channels,
      ``x[:, arange(N) % C]``, whether or not ``C`` divides ``N`` (3 -> 5: ``(r, g, b, r, g)``).

    Equal outputs need the conv to see the model's input unchanged: a model
    whose forward changes it first (inception_v3 with ``transform_input=True``,
    torchvision detectors' per-channel normalisation) is refused with
    :class:`SurgeryError`, checked by a shape probe on ``input_size`` /
    ``example_inputs`` (else a guessed ``(1, C, 224, 224)``); the model is
    left as it was.

    Example::

        >>> model = adapt_input_channels(create_model("resnet18"), 1)
        >>> model.conv1, model.in_chans
        (Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False), 1)
    """
    if in_chans < 1:
        raise SurgeryError(f"in_chans must be >= 1, got {in_chans}.")
    path = path if path is not None else _first_conv(model)
    conv = get_module(model, path)
    if not isinstance(conv, CONV_TYPES) or conv.groups != 1:
        raise SurgeryError(f"{path!r} is {conv}; adapt_input_channels needs an ungrouped Conv1d/2d/3d.")
    call = example_call(model, input_size=input_size or None, example_inputs=example_inputs, error=SurgeryError)
    _check_takes_the_input(model, path, call)
    return adapt_channels(model, in_chans, path)


def adapt_channels(model: nn.Module, in_chans: int, path: str) -> nn.Module:
    """The weight change of :func:`adapt_input_channels`, recorded (replayed by ``load_model`` with no probe).

    On the meta device (a replay before the weights are read) only the new shape is made: nothing is
    allocated, however many channels a config asks for.
    """
    conv = get_module(model, path)
    weight = conv.weight.detach()  # (O, C, *k)
    source = weight.shape[1]
    if weight.is_meta:
        new = weight.new_empty(weight.shape[0], in_chans, *weight.shape[2:])  # (O, in_chans, *k), shapes only
    elif in_chans <= source:
        new = weight.new_zeros(weight.shape[0], in_chans, *weight.shape[2:])  # (O, in_chans, *k)
        new.index_add_(1, torch.arange(source, device=weight.device) % in_chans, weight)
    else:
        old_of_new = torch.arange(in_chans, device=weight.device) % source  # (N,) new channel j stands for j % C
        repeats = in_chans // source + (old_of_new < in_chans % source).to(weight.dtype)  # (N,) new channels sharing it
        shape = (1, in_chans) + (1,) * (weight.dim() - 2)
        new = weight[:, old_of_new] / repeats.reshape(shape)  # (O, in_chans, *k)
    conv.weight = nn.Parameter(new, requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_chans
    update_attrs(model, in_chans=in_chans)
    record(model, "adapt_input_channels", in_chans=in_chans, path=path)
    return model
