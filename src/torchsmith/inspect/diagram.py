"""``diagram(model, input_size, path=...)``: one self-contained, offline HTML page of the architecture.

The page holds everything inline: the graph as JSON, the script that draws it, and the vendored
layout engine (elkjs, the Eclipse Layout Kernel's layered algorithm; ``vendor/README.md``). No server,
no system binary, no network. Modules open and close by hierarchy (collapsed by default, so a
5,000-node model opens at its top level), repeated blocks are folded, search expands to a match,
hover or click shows shapes, parameters and FLOPs. ``diagram`` leaves the model untouched (it runs
on the meta device like :func:`~torchsmith.summary`).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.atomic import atomic_write
from ..errors import InspectError
from .collect import BACKENDS, collect, module_params
from .graph import FlowGraph
from .summary import example_inputs
from .totals import format_flops

__all__ = ["diagram", "ELK_VERSION"]

ELK_VERSION = "0.12.1"


def _asset(name: str) -> str:
    return resources.files("torchsmith.inspect").joinpath(name).read_text(encoding="utf-8")


def diagram(
    model: nn.Module,
    input_size: Sequence[int] | Sequence[Sequence[int]] | None = None,
    *,
    path: str | os.PathLike = "model.html",
    inputs: Any = None,
    kwargs: dict | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    device: str = "meta",
    allow_real: bool = False,
    title: str | None = None,
) -> Path:
    """Write an interactive architecture diagram of ``model`` to ``path`` (one HTML file) and return it.

    Inputs as for :func:`~torchsmith.summary` (``input_size`` or example ``inputs``; ``dtype``,
    ``device``, ``allow_real``). Nodes are modules without children and the ops between them (a
    skip connection's ``add`` or ``cat``); groups are modules with children.

    Raises:
        InspectError: no backend could run the forward (the message names the module and shapes).

    Example:

        >>> import torchsmith
        >>> page = torchsmith.diagram(torchsmith.create_model("unet"), (1, 3, 64, 64), path="out/unet.html")
        >>> page.name, page.stat().st_size > 1_000_000   # the layout engine is inlined
        ('unet.html', True)
    """
    if device not in BACKENDS:
        raise InspectError(f"device must be one of {', '.join(BACKENDS)}; got {device!r}")
    args, kw, desc = example_inputs(input_size, inputs, kwargs, dtype)
    params = module_params(model)
    order = [b for b in BACKENDS[BACKENDS.index(device):] if b != "real" or allow_real or device == "real"]
    errors = []
    for backend in order:
        run = collect(model, args, kw, backend=backend, training=None, params=params, flow_factory=FlowGraph)
        if run.error is None:
            break
        errors.append(f"{backend}: {run.error}")
    else:
        raise InspectError("cannot draw the model: " + "; ".join(errors) + " (allow_real=True runs it for real)")
    graph = run.graph.to_dict()
    total = sum(p.numel() for p in model.parameters())
    name = title or type(model).__name__
    meta = f"input {desc} \u00b7 {total:,} parameters \u00b7 {format_flops(run.flops)} \u00b7 {len(graph['items'])} nodes"
    data = json.dumps(graph, separators=(",", ":")).replace("</", "<\\/")
    page = (_asset("diagram.html")
            .replace("__TITLE__", html.escape(name))
            .replace("__META__", html.escape(meta))
            .replace("__DATA__", data)
            .replace("__ELK__", _asset("vendor/elk.bundled.js")))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:  # a reader (a browser reloading) sees the old page or the new one
        f.write(page.encode("utf-8"))
    return out
