"""Declarative model specs: models as data (YAML, JSON or a dict), validated, built, saved and rebuilt.

``build`` returns a new model; nothing here changes a model in place. A spec names only torch.nn
layers (from an explicit allow-list), registered blocks, graph ops and registered models: nothing is
imported or evaluated. A spec-built model records its spec through the registry (as the model
``"spec"``), so ``save_model`` writes it to ``config.json`` and ``load_model`` rebuilds it with no code.

    >>> import torch, torchsmith
    >>> model = torchsmith.build('''
    ... input: [1, 3, 224, 224]
    ... layers:
    ...   conv1: {Conv2d: [3, 20, 5]}
    ...   relu1: ReLU
    ...   conv2: {Conv2d: [auto, 64, 5]}
    ...   relu2: ReLU
    ... ''')
    >>> [name for name, _ in model.named_children()]
    ['conv1', 'relu1', 'conv2', 'relu2']
    >>> model(torch.rand(1, 3, 224, 224)).shape       # (B, 64, 216, 216)
    torch.Size([1, 64, 216, 216])
    >>> torchsmith.to_spec(model)["layers"]["conv1"]
    {'Conv2d': [3, 20, 5]}

Roles: ``source`` reads text and files, ``parse`` validates into a tree (every problem, with paths),
``builder`` makes modules (shapes inferred on meta), ``modules`` holds the graph and container modules,
``ops`` the graph ops, ``names`` what names resolve to, ``schema`` the JSON Schema.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..errors import SpecError
from ..layers import ACT_LAYERS, NORM_LAYERS
from ..registry import get_model_builder, model_config, register_model
from . import blocks as _blocks  # noqa: F401 - registers the zoo's U-Net blocks
from . import ops as _ops  # noqa: F401 - registers the graph ops
from .builder import construct, shapes_of
from .modules import GraphModel, GraphNode, LayerDict, LayerList
from .names import register_block, register_op
from .parse import parse_spec
from .schema import spec_schema
from .source import read_spec

__all__ = [
    "build",
    "to_spec",
    "spec_schema",
    "register_block",
    "register_op",
    "GraphModel",
    "GraphNode",
    "LayerList",
    "LayerDict",
    "census",
    "output_shapes",
]

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


def build(
    spec: dict[str, Any] | str | os.PathLike,
    *,
    input_size: Sequence[int] | dict[str, Sequence[int]] | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Build the model a spec describes.

    Args:
        spec: a dict, YAML or JSON text, or the path of a ``.yaml`` / ``.json`` file.
        input_size: the input shape (overrides the spec's ``input``); with it, ``"auto"`` widths are
            inferred and every layer is checked against the shape reaching it, on the meta device.
        device: where to build (default: the current default device).

    Raises:
        SpecError: listing every problem with its path, e.g. ``layers.conv1.Conv2d.args[0]: expected int, got 'x'``.

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
    names = {cls: name for table in (ACT_LAYERS, NORM_LAYERS) for name, cls in reversed(list(table.items()))}

    def plain(value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: plain(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, type) and value in names:
            return names[value]
        problems.append(f"{where}={value!r}")
        return None

    kwargs = {k: plain(v, k) for k, v in cfg["kwargs"].items()}
    if problems:
        raise SpecError(
            f"to_spec: {cfg['name']!r} was built with arguments a spec cannot hold: {', '.join(problems)}. "
            f"Pass layer names ({', '.join(sorted(set(ACT_LAYERS) | set(NORM_LAYERS)))}) or plain values instead.",
            problems,
        )
    return {"model": {cfg["name"]: kwargs} if kwargs else cfg["name"]}


# a compact description, until the summary is in


def census(model: nn.Module) -> dict[str, int]:
    """Leaf modules counted by class name, most common first.

    >>> census(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU()))
    {'Conv2d': 2, 'ReLU': 2}
    """
    counts = Counter(type(m).__name__ for m in model.modules() if not any(True for _ in m.children()))
    return dict(counts.most_common())


def output_shapes(spec: dict[str, Any] | str | os.PathLike, *, input_size: Sequence[int] | dict[str, Sequence[int]] | None = None) -> Any:
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
