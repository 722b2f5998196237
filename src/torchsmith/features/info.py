"""``feature_info``: channels, stride and layout of requested nodes, measured by shape-only runs
(:func:`torchsmith.runner.probe`) of the extractor, twice: at the given input size and at double it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..errors import FeatureExtractionError
from ..layers import FeatureInfo, FeatureInfoList
from ..paths import unwrapped
from ..runner import example_call, map_tensors, probe, refuse_uninitialised, tensor_leaves
from .extract import extract_features
from .nodes import ReturnNodes, _normalise

__all__ = ["feature_info"]

logger = logging.getLogger("torchsmith")


def _declared(model: nn.Module) -> dict[str, tuple[int | None, int | None]]:
    """``{module: (channels, stride)}`` the model declares: ours (:class:`FeatureInfo`), timm's
    (a list of dicts, or ``features_only`` models' ``FeatureInfo`` with ``get_dicts()``)."""
    own = getattr(model, "feature_info", None)
    if own is None or isinstance(own, nn.Module):
        return {}
    if callable(getattr(own, "get_dicts", None)):
        own = own.get_dicts()
    out: dict[str, tuple[int | None, int | None]] = {}
    try:
        for item in own:
            if isinstance(item, FeatureInfo):
                out[item.module] = (item.channels, item.stride)
            elif isinstance(item, Mapping) and isinstance(item.get("module"), str):
                out[item["module"]] = (item.get("num_chs"), item.get("reduction"))
    except TypeError:
        return {}
    return out


def _bigger(call: tuple[tuple, dict]) -> tuple[tuple, dict] | None:
    """The same call with every input's spatial (image) or sequence (token ids) dims doubled, at any depth
    (inside dicts, lists, tuples, dataclasses); None when no input has such dims."""

    def grow(x: Any) -> Any:
        if not isinstance(x, Tensor):
            return x
        first = 2 if x.is_floating_point() or x.is_complex() else 1  # (B, C, *spatial) or (B, L) token ids
        if x.dim() <= first:
            return x
        return x.new_zeros(*x.shape[:first], *(2 * n for n in x.shape[first:]))

    grown = map_tensors(call[0], grow), map_tensors(call[1], grow)
    changed = any(g is not t for (_, g), (_, t) in zip(tensor_leaves(grown), tensor_leaves(call)))
    return grown if changed else None


def _stride(x: Tensor | None, x2: Tensor | None, y: Tensor, y2: Tensor | None, layout: str) -> int | None:
    """Input pixels per map pixel along the width: the change of the input's width over the change of the
    map's between the two runs (so the answer does not hang on the size asked), else input / map width
    when the model runs at one size only; 0 for (B, C) and token outputs; None for a map that does not
    follow the input (adaptive pooling to a fixed size)."""
    if x is None or not x.is_floating_point() or x.dim() < 3 or y.dim() < 3 or layout not in ("channels_first", "channels_last"):
        return 0
    dim = -1 if layout == "channels_first" else -2  # the width: (B, C, H, W) or (B, H, W, C)
    if y2 is None or x2 is None:
        return round(x.shape[-1] / y.shape[dim])
    grown = y2.shape[dim] - y.shape[dim]
    return round((x2.shape[-1] - x.shape[-1]) / grown) if grown > 0 else None


def _grid_of(x: Tensor | None, y: Tensor, channel: int) -> bool:
    """Whether ``y``'s dims other than batch and ``channel`` are ``x``'s image grid divided by one stride."""
    if x is None or not x.is_floating_point() or x.dim() != y.dim():
        return False
    grid = [n for d, n in enumerate(y.shape) if d not in (0, channel)]
    strides = {size // n if n and size % n == 0 else -1 for size, n in zip(x.shape[2:], grid)}
    return len(strides) == 1 and -1 not in strides


def _layout(y: Tensor, y2: Tensor | None, declared: int | None, x: Tensor | None = None) -> tuple[str, int] | None:
    """``(layout, channel dim)`` of ``y``: the one dim that does not grow with the input (``y2``); else the one
    dim equal to the declared channel count; else, for an image-shaped output, the one reading whose other
    dims are the input grid divided by one stride. None when none of these tells."""
    if y.dim() == 2:
        return "channels_first", 1
    dims = range(1, y.dim())
    fixed = [d for d in dims if y2 is not None and y2.dim() == y.dim() and y.shape[d] == y2.shape[d]]
    if len(fixed) != 1 and declared is not None:
        fixed = [d for d in dims if y.shape[d] == declared]
    if len(fixed) != 1 and y2 is None:
        fixed = [d for d in (1, y.dim() - 1) if _grid_of(x, y, d)]
    if len(fixed) != 1:
        return None
    dim = fixed[0]
    if dim == 1:
        return "channels_first", 1
    if dim == y.dim() - 1:
        return ("tokens" if y.dim() == 3 else "channels_last"), dim
    return None


def feature_info(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    return_nodes: ReturnNodes | None = None,
    *,
    example_inputs: Any = None,
) -> FeatureInfoList:
    """Channels, stride and layout of each requested node, found on the meta device (no compute, no memory).

    ``return_nodes`` defaults to the modules the model declares in its
    ``feature_info`` (ours, or timm's list of dicts), else its top-level
    children whose output follows the input size (adaptive pooling to a fixed
    size and classifier heads are left out). The input is ``input_size`` (a
    float tensor), ``example_inputs`` (a tensor, a tuple of positional
    arguments or a dict of keyword arguments, nested as the forward takes them,
    any dtypes: token ids for BERT), or guessed from the first layer.

    Which dimension holds the channels is measured, not assumed: the model is
    probed a second time with the spatial (or sequence) dims doubled, and the
    one output dim that does not grow is the channel dim (layout
    ``"channels_first"``, ``"channels_last"`` for swin's ``(B, H, W, C)``,
    ``"tokens"`` for ``(B, L, C)``). A model that runs at one input size only
    is read with the channel count it declares; with neither, the node is
    refused with :class:`FeatureExtractionError`. Stride is the model's declared
    stride (timm's ``reduction``) when it has one, else the growth of the input
    over the growth of the map between the two runs (the same at any input
    size; input width / map width for a model with one size); ``0`` for
    ``(B, C)`` and token outputs.

    Example::

        >>> feature_info(create_model("resnet50"), (1, 3, 224, 224), ["layer1", "layer4"])
        [FeatureInfo(channels=256, stride=4, module='layer1'), FeatureInfo(channels=2048, stride=32, module='layer4')]
    """
    model = unwrapped(model)
    refuse_uninitialised(model, error=FeatureExtractionError, action="measure its feature maps")
    declared = _declared(model)
    default = return_nodes is None
    if default:
        return_nodes = list(declared) or [name for name, _ in model.named_children()]
    requested = _normalise(return_nodes)
    call = example_call(model, input_size=input_size or None, example_inputs=example_inputs, error=FeatureExtractionError)
    extractor = extract_features(model, requested)
    purpose = "measure its feature maps"
    outputs = probe(extractor, call, error=FeatureExtractionError, purpose=purpose)
    bigger = _bigger(call)
    try:  # fails on a model with one input size; an fx graph prints its traceback when it fails: not wanted here
        with contextlib.redirect_stderr(io.StringIO()):
            outputs2 = probe(extractor, bigger, error=FeatureExtractionError) if bigger is not None else None
    except FeatureExtractionError as err:  # a model with one input size: the declared channels decide
        logger.info("%s does not run at a second input size (%s)", type(model).__name__, err)
        outputs2 = None
    spatial = lambda c: next((t for _, t in tensor_leaves(c) if t.is_floating_point() and t.dim() >= 3), None)  # noqa: E731
    x = spatial(call)
    x = x if x is not None else next((t for _, t in tensor_leaves(call)), None)
    x2 = spatial(bigger) if outputs2 is not None else None
    info, left_out = FeatureInfoList(), []
    for node, name in requested.items():
        y = outputs[name]
        if not isinstance(y, Tensor) or y.dim() < 2:
            raise FeatureExtractionError(
                f"node {node!r} of {type(model).__name__} gives {type(y).__name__} {tuple(getattr(y, 'shape', ()))}, not a "
                "(B, C, ...) tensor. Pass return_nodes= with nodes whose output is one (feature_nodes(model) lists them)."
            )
        channels, stride = declared.get(node, (None, None))
        y2 = outputs2[name] if outputs2 is not None and isinstance(outputs2[name], Tensor) else None
        if default and node not in declared and y2 is not None and y2.shape == y.shape:
            left_out.append(node)  # its size does not follow the input: a head, adaptive pooling
            continue
        found = _layout(y, y2, channels, x)
        if found is None:
            raise FeatureExtractionError(
                f"cannot tell which dimension of {node!r}'s output {tuple(y.shape)} holds channels: "
                f"{type(model).__name__} {'gives ' + str(tuple(y2.shape)) + ' at twice the input size' if y2 is not None else 'does not run at a second input size'} "
                "and declares no channel count for it. Request a node with a (B, C, ...) output."
            )
        layout, dim = found
        if stride is None:
            stride = _stride(x, x2, y, y2, layout)
        if stride is None:
            if default:
                left_out.append(node)
                continue
            raise FeatureExtractionError(
                f"{node!r}'s map {tuple(y.shape)} keeps its size when the input grows (adaptive pooling to a fixed "
                "size?): it has no stride. Request a node before it."
            )
        info.append(FeatureInfo(channels=int(y.shape[dim]), stride=int(stride), module=node, layout=layout))
    if left_out:
        logger.info("feature_info: %s left out: their size does not follow the input", left_out)
    if default and not info:
        raise FeatureExtractionError(
            f"none of {type(model).__name__}'s top-level children {left_out} gives a map that follows the input size; "
            "pass return_nodes= (see feature_nodes(model))."
        )
    return info
