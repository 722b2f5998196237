"""Specs as models: ``build`` a spec, ``to_spec`` a model, ``output_shapes`` of a spec; ``spec_model`` is the
registered model ``"spec"`` (so the registry records a built spec and ``save_model`` / ``load_model`` round-trip it).

``build`` returns a new model; nothing here changes a model in place.

    >>> to_spec(build({"layers": {"fc": {"Linear": [4, 2]}, "act": "ReLU"}}))
    {'layers': {'fc': {'Linear': [4, 2]}, 'act': 'ReLU'}}
"""

from __future__ import annotations

import copy
import os
import typing
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..checkpoint.limits import Limits, takes_limits
from ..codec import encode, layer_names
from ..errors import SpecError
from ..registry import get_model_builder, model_config, register_model
from .builder import construct, shapes_of
from .names import signature
from .parse import parse_spec
from .source import read_spec

__all__ = ["build", "to_spec", "output_shapes", "spec_model", "SPEC_MODEL"]

SPEC_MODEL = "spec"


@register_model(name=SPEC_MODEL)
def spec_model(*, spec: dict[str, Any] | None = None) -> nn.Module:
    """The model a spec (a dict) describes; see :func:`build`. Without a spec, an empty ``nn.Sequential``.

    Registered as ``"spec"`` so the registry records the spec and ``save_model`` / ``load_model`` round-trip it.
    """
    if spec is None:
        return nn.Sequential()
    if not isinstance(spec, dict):
        raise SpecError(f"create_model('spec', spec=...) takes the spec as a dict, got a {type(spec).__name__}; use torchsmith.build() for text or paths.")
    root, shapes, _ = parse_spec(read_spec(spec))
    model, _ = construct(root, shapes)
    return model


def _input_entry(input_size: Sequence[int] | dict[str, Sequence[int]]) -> Any:
    if isinstance(input_size, dict):
        return {k: list(v) for k, v in input_size.items()}
    if isinstance(input_size, torch.Size) or isinstance(input_size, (list, tuple)):
        return list(input_size)
    raise SpecError(f"input_size must be a shape such as (1, 3, 224, 224), got {input_size!r}.")


@takes_limits
def build(
    spec: dict[str, Any] | str | os.PathLike,
    *,
    input_size: Sequence[int] | dict[str, Sequence[int]] | None = None,
    device: str | torch.device | None = None,
    limits: Limits | None = None,
) -> nn.Module:
    """Build the model a spec describes.

    Args:
        spec: a dict, YAML or JSON text, or the path of a ``.yaml`` / ``.json`` file.
        input_size: the input shape (overrides the spec's ``input``); with it, ``"auto"`` widths are
            inferred and every layer is checked against the shape reaching it, on the meta device.
        device: where to build (default: the current default device).
        limits: the bounds on what the spec may build (``Limits.max_modules``, ``max_parameters``;
            counted on the meta device as it is built, before a real build allocates).

    Raises:
        SpecError: listing every problem with its path, e.g. ``layers.conv1.Conv2d.args[0]: expected int, got 'x'``;
            or a spec asking for more modules or parameters than the limits allow (naming how to raise them).

    Example::

        >>> m = build({"input": [1, 784], "layers": [{"Linear": ["auto", 256]}, "ReLU", {"Linear": ["auto", 10]}]})
        >>> m(torch.rand(1, 784)).shape                  # (B, 784) -> (B, 10)
        torch.Size([1, 10])
    """
    doc = read_spec(spec)
    if input_size is not None:
        doc["input"] = _input_entry(input_size)
    with torch.device(device) if device is not None else nullcontext():
        return get_model_builder(SPEC_MODEL)(spec=doc)


def to_spec(model: nn.Module) -> dict[str, Any]:
    """The spec of a model built from a spec (as written) or through the registry (``{"model": {name: kwargs}}``).

    Raises:
        SpecError: the model was built neither way, was changed after it was built (surgery steps are
            recorded: ``save_model`` keeps them), or a registry argument has no plain-data form.

    Example::

        >>> import torchsmith
        >>> to_spec(torchsmith.create_model("resnet18", num_classes=10))
        {'model': {'resnet18': {'num_classes': 10}}}
    """
    cfg = model_config(model)
    if cfg is None:
        raise SpecError(
            f"to_spec: this {type(model).__name__} was built neither from a spec nor through the registry, so "
            f"there is nothing recorded to write. Build it with torchsmith.build(spec) or torchsmith.create_model(name)."
        )
    steps = cfg.get("steps") or []
    if steps:
        done = ", ".join(str(step.get("op", step)) if isinstance(step, dict) else str(step) for step in steps)
        raise SpecError(
            f"to_spec: this model was changed after it was built ({done}); a spec describes a model as built, so it "
            f"would rebuild the model before those changes. save_model(model, dir) records the changes and "
            f"load_model replays them; or build the spec and apply the same changes again.",
            [f"steps[{i}]: {step}" for i, step in enumerate(steps)],
        )
    if cfg["name"] == SPEC_MODEL:
        recorded = cfg["kwargs"].get("spec")
        return copy.deepcopy(recorded) if recorded is not None else {"model": SPEC_MODEL}  # the empty Sequential
    problems: list[str] = []
    # a layer class is its bare name where the builder takes a name (the zoo's norm_layer: str | ...), else {$layer: name}
    sig = signature(get_model_builder(cfg["name"]))
    params = sig.parameters if sig is not None else {}
    named = {k for k, p in params.items() if _takes_a_name(p.annotation)}
    kwargs = {k: encode(v, where=k, problems=problems, bare_layers=k in named) for k, v in cfg["kwargs"].items()}
    if problems:
        raise SpecError(
            f"to_spec: {cfg['name']!r} was built with arguments a spec cannot hold: {', '.join(problems)}. "
            f"Pass layer names ({', '.join(layer_names())}, or torch.nn names on the allow-list), torch dtypes "
            f"or plain values instead.",
            problems,
        )
    return {"model": {cfg["name"]: kwargs} if kwargs else cfg["name"]}


def _takes_a_name(annotation: Any) -> bool:
    """Whether a parameter's annotation admits a ``str`` (``str | Callable[..., nn.Module] | None``)."""
    if isinstance(annotation, str):  # not evaluated (a registered class's signature keeps the text)
        return "str" in (part.strip() for part in annotation.split("|"))
    return annotation is str or str in typing.get_args(annotation)


@takes_limits
def output_shapes(
    spec: dict[str, Any] | str | os.PathLike,
    *,
    input_size: Sequence[int] | dict[str, Sequence[int]] | None = None,
    limits: Limits | None = None,
) -> Any:
    """The output shape(s) of the spec's model for its ``input`` (or ``input_size``), found on the meta device.

    >>> output_shapes({"layers": [{"Conv2d": [3, 20, 5]}, "ReLU"]}, input_size=(1, 3, 224, 224))
    (1, 20, 220, 220)
    """
    doc = read_spec(spec)
    if input_size is not None:
        doc["input"] = _input_entry(input_size)
    if "input" not in doc:
        raise SpecError("output_shapes: the spec has no input entry; pass input_size=(batch, channels, ...).")
    root, shapes, _ = parse_spec(doc)
    with torch.device("meta"):
        _, out = construct(root, shapes)
    return shapes_of(out)
