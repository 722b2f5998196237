"""Input channels: making the first conv take another number of channels, keeping what it computes.

``adapt_input_channels`` changes the model in place and returns it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SurgeryError
from ..paths import inner_path, unwrapped
from ..runner import (
    CONV_TYPES, Call, example_call, map_tensors, probe, refuse_uninitialised, restored_on_failure, tensor_leaves,
)  # fmt: skip
from ..steps import record, recorded_op
from .check import check_runs
from .modules import get_module, update_attrs
from .parametrized import reparametrize, unparametrized

__all__ = ["adapt_input_channels"]


def _conv_inputs(model: nn.Module, call: Call) -> tuple[dict[str, str | None], list[str]]:
    """One shape-only run: ``{conv path: key of the model input it reads (``"0"``, ``"1.img.0"``), or None when
    it reads anything else}``, and the convs in the order they were first called."""
    given: dict[int, str] = {}
    reads: dict[str, str | None] = {}

    def inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:  # every attempt of the runner starts afresh
        given.clear()
        reads.clear()
        given.update((id(t), key) for key, t in tensor_leaves((args, kwargs)))

    def conv_input(path: str):
        def hook(module: nn.Module, args: tuple) -> None:
            key = given.get(id(args[0])) if args and isinstance(args[0], Tensor) else None
            if path not in reads or key is not None:
                reads[path] = key
        return hook

    with ExitStack() as es:
        es.callback(model.register_forward_pre_hook(inputs, with_kwargs=True).remove)
        for path, m in model.named_modules():
            if isinstance(m, CONV_TYPES):
                es.callback(m.register_forward_pre_hook(conv_input(path)).remove)
        probe(model, call, error=SurgeryError, purpose="find the convs that read its input")
    return reads, list(reads)


def _refuse_changed_input(model: nn.Module, path: str) -> SurgeryError:
    return SurgeryError(
        f"{type(model).__name__}'s forward changes its input before {path!r} (e.g. inception_v3's transform_input "
        "indexes the RGB channels, detectors normalise each channel): adapting that conv's channels would not "
        "keep the model equivalent, or would break its forward. Turn that step off (transform_input=False) "
        "or adapt the model's input handling yourself, then call adapt_input_channels."
    )


def _with_channels(call: Call, key: str, in_chans: int) -> Call:
    """``call`` with the input at ``key`` given ``in_chans`` channels (a meta tensor of that shape)."""
    old = dict(tensor_leaves(call))[key]
    new = torch.empty(old.shape[0], in_chans, *old.shape[2:], dtype=old.dtype, device="meta")  # (B, in_chans, ...)
    return map_tensors(call[0], lambda t: new if t is old else t), map_tensors(call[1], lambda t: new if t is old else t)


@recorded_op("adapt_input_channels", replay=lambda model, step: adapt_channels(model, step["in_chans"], step["path"]))
def adapt_input_channels(
    model: nn.Module,
    in_chans: int,
    *,
    path: str | None = None,
    input_size: Sequence[int] | None = None,
    example_inputs: Any = None,
) -> nn.Module:
    """Make the convs that read the model's input take ``in_chans`` channels, keeping what they compute; returns ``model``.

    The convs are found by a shape probe on ``input_size`` / ``example_inputs``
    (else a guessed ``(1, C, 224, 224)``; inputs may be nested in dicts, lists
    and tuples): the first conv the forward calls, or ``path``, and every other
    conv that reads that very input tensor (RepVGG's stem has a 3x3 and a 1x1
    branch on the image: both change). From ``C`` to ``N = in_chans`` channels,
    each keeps this equivalence, for any ``C`` and ``N``: an input ``x`` with
    ``N`` channels and one ``x'`` with ``C`` channels give equal outputs when
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
    :class:`SurgeryError`, and so is a conv whose forward is not linear in its
    weight (weight standardisation, timm's StdConv2d: checked on a small input).
    ``num_channels`` that Hugging Face vision models check the input against
    (embeddings, config) follow. A conv with a ``weight_norm`` parametrization keeps
    it (re-applied to the new weight); one whose parametrization cannot hold
    the new weight (``spectral_norm``, ``orthogonal``) is refused, naming it.
    Afterwards the model is run once on the input with ``in_chans`` channels;
    if it does not run, it is restored and :class:`SurgeryError` names the
    layer that fails. A refused call leaves the model as it was.

    Example::

        >>> model = adapt_input_channels(create_model("resnet18"), 1)
        >>> model.conv1, model.in_chans
        (Conv2d(1, 64, kernel_size=(7, 7), stride=(2, 2), padding=(3, 3), bias=False), 1)
    """
    if in_chans < 1:
        raise SurgeryError(f"in_chans must be >= 1, got {in_chans}.")
    inner = unwrapped(model)
    refuse_uninitialised(inner, error=SurgeryError, action="adapt its input channels")
    call = example_call(inner, input_size=input_size or None, example_inputs=example_inputs, error=SurgeryError)
    reads, called = _conv_inputs(inner, call)
    if path is not None:
        path = inner_path(path)
        if not isinstance(get_module(inner, path), CONV_TYPES):
            raise SurgeryError(f"{path!r} is {get_module(inner, path)}; adapt_input_channels needs an ungrouped Conv1d/2d/3d.")
        if path not in reads:
            raise SurgeryError(f"{type(inner).__name__}'s forward never calls {path!r}; pass path= to name the input conv.")
    elif not called:
        raise SurgeryError(
            f"{type(inner).__name__} calls no Conv1d/2d/3d layer on this input; pass path= to name the input layer.")
    first = path if path is not None else called[0]
    key = reads[first]
    if key is None:
        raise _refuse_changed_input(inner, first)
    targets = [p for p in called if reads[p] == key]
    for p in targets:
        conv = get_module(inner, p)
        if conv.groups != 1:
            raise SurgeryError(f"{p!r} is {conv}; adapt_input_channels needs an ungrouped Conv1d/2d/3d.")
    configs = {id(c): (c, c.num_channels) for m in inner.modules() if hasattr(c := getattr(m, "config", None), "num_channels")}
    try:
        with restored_on_failure(inner):
            for p in targets:
                before = copy.deepcopy(get_module(inner, p))
                adapt_channels(inner, in_chans, p)
                _check_kept(before, get_module(inner, p), p)
            check_runs(inner, _with_channels(call, key, in_chans), action="adapt_input_channels")
    except BaseException:
        for config, value in configs.values():  # a shared config object is not a module attribute: put back here
            config.num_channels = value
        raise
    return model


def _count_channels(model: nn.Module, path: str, source: int, in_chans: int) -> None:
    """The channel counts a model checks its input against (Hugging Face vision models: ``num_channels`` on the
    embeddings on the way to the input conv, and on their config), set to ``in_chans`` where they said ``source``."""
    parts = path.split(".")
    for i in range(len(parts)):
        module = model.get_submodule(".".join(parts[:i]))
        if type(getattr(module, "num_channels", None)) is int and module.num_channels == source:
            module.num_channels = in_chans
        config = getattr(module, "config", None)
        if type(getattr(config, "num_channels", None)) is int and config.num_channels == source:
            config.num_channels = in_chans


def _check_kept(before: nn.Module, after: nn.Module, path: str) -> None:
    """Refuse a conv whose forward is not linear in its weight (weight standardisation: timm's StdConv2d,
    ScaledStdConv2d): there, summing input channels' weights does not keep what it computes. Checked, not
    guessed from the class: on a small random input whose channels repeat as the adapted weight assumes,
    ``after(x)`` must equal ``before(x repeated)`` (a conv that only pads in its forward, Conv2dSame, passes)."""
    if before.weight.is_meta:
        return
    source, target = before.in_channels, after.in_channels
    spatial = [(k - 1) * d + 1 + 2 * st for k, d, st in zip(before.kernel_size, before.dilation, before.stride)]
    gen = torch.Generator().manual_seed(0)
    if target <= source:
        x_new = torch.randn(2, target, *spatial, generator=gen).to(before.weight)  # (2, target, *spatial)
        x_old = x_new[:, torch.arange(source) % target]  # (2, source, *spatial): channel c is new channel c % target
    else:
        x_old = torch.randn(2, source, *spatial, generator=gen).to(before.weight)  # (2, source, *spatial)
        x_new = x_old[:, torch.arange(target) % source]  # (2, target, *spatial): new channel j is old j % source
    with torch.no_grad():
        want, got = before(x_old), after(x_new)
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    if not err <= 1e-4 * scale + 1e-6:
        raise SurgeryError(
            f"adapt_input_channels cannot keep what {path!r} ({type(before).__name__}) computes: its forward is not "
            f"linear in its weight (weight standardisation, as timm's StdConv2d), so summing input channels' weights "
            f"changes its output on repeated input (max error {err:.3g} at scale {scale:.3g}). Replace it with a plain "
            f"nn.Conv2d first (replace_module), or build the model with its library's in_chans= and fine-tune. "
            f"The model is as it was."
        )


def adapt_channels(model: nn.Module, in_chans: int, path: str) -> nn.Module:
    """The weight change of :func:`adapt_input_channels`, recorded (replayed by ``load_model`` with no probe).

    On the meta device (a replay before the weights are read) only the new shape is made: nothing is
    allocated, however many channels a config asks for.
    """
    conv = get_module(model, path)
    parametrizations = unparametrized(conv)  # weight_norm ...: edited as the weight it computes, then put back
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
    reparametrize(conv, parametrizations, path=path, action="adapt_input_channels")
    update_attrs(model, in_chans=in_chans)
    _count_channels(model, path, source, in_chans)
    record(model, "adapt_input_channels", in_chans=in_chans, path=path)
    return model
